"""fairbench's Conv2d weight-diagonal paths for the BackPACK engine of
:mod:`fairbench.training.curvature` against BackPACK's own extension, and against the autograd
engine that fairbench uses by default: diagonal-curvature time relative to one forward+backward
of the same batches, timed alternately in one process (best of ``--repeats``), so a loaded
machine slows every column alike. Modes:

* ``backpack``: BackPACK's extension for every convolution (whole-batch ``JᵀS`` product);
* ``few``: the few-positions GEMMs for convolutions with at most ``--few-positions`` output
  positions, BackPACK's product for the others;
* ``chunked``: BackPACK's product formed in cache-sized blocks for every convolution;
* ``both``: few-positions, else chunked (the BackPACK engine, fairbench's fallback);
* ``autograd``: the autograd engine (:mod:`fairbench.training.persample`, the default).

    python benchmarks/bench_few_positions.py --backbones resnet18 vgg11 --estimators ggn_mc
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

#: mode → (few-positions path on, chunked path on) under the BackPACK engine; None: autograd
MODES: dict[str, tuple[bool, bool] | None] = {
    "backpack": (False, False), "few": (True, False), "chunked": (False, True),
    "both": (True, True), "autograd": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "vgg11", "smallcnn"])
    parser.add_argument("--estimators", nargs="+", default=["ggn_mc", "ggn_exact"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--few-positions", type=int, default=None,
                        help="threshold of the few-positions path [saliency.FEW_POSITIONS]")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--n", type=int, default=128, help="images per timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    import fairbench.training.curvature as S
    from fairbench import Batch, create_backbone

    few_threshold = args.few_positions if args.few_positions is not None else S.FEW_POSITIONS
    chunk_bytes = dict(S.CHUNK_BYTES)
    size, bs = args.image_size, args.batch_size
    for name in args.backbones:
        torch.manual_seed(0)
        model = create_backbone(name, num_classes=args.classes, image_size=size).eval()
        batches = [Batch(x=torch.randn(bs, 3, size, size),
                         y=torch.randint(0, args.classes, (bs,)), g=None, index=torch.arange(bs))
                   for _ in range(max(1, args.n // bs))]

        def fwd_bwd(model: torch.nn.Module = model, batches: list = batches) -> float:
            t = time.perf_counter()
            for b in batches:
                model.zero_grad()
                F.cross_entropy(model(b.x), b.y).backward()
            return time.perf_counter() - t

        for est in args.estimators:
            times: dict[str, list[float]] = {"fb": [], **{k: [] for k in args.modes}}
            for _ in range(args.repeats):
                times["fb"].append(fwd_bwd())
                for mode in args.modes:
                    paths = MODES[mode]
                    if paths is None:
                        S.ENGINES[est] = "autograd"
                    else:
                        S.ENGINES[est] = "backpack"
                        S.FEW_POSITIONS = few_threshold if paths[0] else 0
                        S.CHUNK_BYTES = chunk_bytes if paths[1] else {}
                    t = time.perf_counter()
                    S.diagonal_curvature(model, batches, estimator=est)
                    times[mode].append(time.perf_counter() - t)
            fb = min(times["fb"])
            cells = ", ".join(f"{mode} {min(times[mode]) / fb:.2f}x" for mode in args.modes)
            print(f"{name} {est} ({size} px, {args.threads} thread(s), fwd+bwd {fb:.2f} s): {cells}")


if __name__ == "__main__":
    main()
