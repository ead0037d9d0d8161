#!/usr/bin/env bash
# The GPU measurements (trainer, curvature, end to end), one part per call (each well under 10 minutes on an
# H100). Run from the repository root on a CUDA machine whose Python has torch, torchvision,
# timm and the rest of setup.cfg's dependencies (BackPACK and its unfoldNd can come as wheels:
# benchmarks/README.md, "GPU").
#
#   bash benchmarks/gpu_check.sh trainer     # trainer and prediction vs a bare loop, 224 px
#   bash benchmarks/gpu_check.sh curvature   # estimators vs fwd+bwd, 8 and 114 classes
#   bash benchmarks/gpu_check.sh e2e         # the FairQuantize paper preset, time by phase
#
# Every table is printed and also written under ${OUT:-gpu_results}/ (markdown logs and JSON).
set -euo pipefail
part="${1:?usage: bash benchmarks/gpu_check.sh trainer|curvature|e2e}"
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FAIRBENCH_NO_PROGRESS=1 FAIRBENCH_CACHE="${FAIRBENCH_CACHE:-/tmp/fairbench-cache}"
if compgen -G ".whl/*.whl" >/dev/null; then  # BackPACK, unfoldNd, smp carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"

case "$part" in
trainer)
  # >= 0.9x a bare loop (Fitzpatrick-17k-sized random data, 224 px, 114 classes)
  for preset in fitzpatrick fitzpatrick-vgg11; do
    python3 benchmarks/bench_trainer.py --preset "$preset" --repeats 3 --epochs 1 \
      --json "$out/trainer_$preset.json" 2>&1 | tee "$out/trainer_$preset.md"
  done
  python3 benchmarks/bench_trainer.py --preset fitzpatrick --compile --repeats 2 --epochs 1 \
    --no-val-row --json "$out/trainer_compile.json" 2>&1 | tee "$out/trainer_compile.md"
  # the data kept in host memory (pinned, copied one batch ahead) against the bare loop on GPU data
  python3 benchmarks/bench_trainer.py --preset fitzpatrick --keep-on-host --repeats 2 --epochs 1 \
    --no-val-row --json "$out/trainer_host.json" 2>&1 | tee "$out/trainer_host.md"
  python3 benchmarks/bench_trainer.py --preset fitzpatrick --repeats 1 --epochs 1 --no-val-row \
    --profile 2>&1 | tail -n 40 | tee "$out/trainer_profile.md"
  ;;
curvature)
  # ggn_mc <= 3x fwd+bwd; every estimator per 1,000 images; the exact GGN
  # at 114 classes goes on in micro-batches when a batch does not fit (the table says so)
  python3 benchmarks/bench_curvature.py --device cuda --backbones resnet18 vgg11 \
    --classes 8 114 --budget 60 --json "$out/curvature.json" 2>&1 | tee "$out/curvature.md"
  ;;
e2e)
  # the FairQuantize paper preset on synthderm at Fitzpatrick-17k's size
  python3 -m fairbench.cli run --config benchmarks/fairquantize_synthfitz_vgg11.toml \
    --device cuda --runs-dir "$out/runs" 2>&1 | tee "$out/e2e.md"
  find "$out/runs" -name config.json -path '*fairquantize*' -exec cp {} "$out/e2e_config.json" \;
  ;;
*)
  echo "unknown part '$part': use trainer, curvature or e2e" >&2
  exit 2
  ;;
esac
