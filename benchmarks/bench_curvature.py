"""Diagonal-curvature cost: each estimator of :func:`fairbench.training.curvature.diagonal_curvature`
per 1,000 images, relative to one plain forward+backward pass over the same images.

For every backbone and estimator (``ggn_exact``, ``ggn_mc``, ``hessian_exact``, ``fisher``)
the same batches (random normalised images and labels, ``--batch-size`` each, already on the
device) go through

* **fwd+bwd**: the plain baseline — model in eval mode, fp32, cross-entropy, ``backward()``
  into every parameter (no optimizer step), and
* **diagonal_curvature(..., estimator=E, scope=S)**: the call FairQuantize/FairPrune make,
  timed whole (it copies and BackPACK-extends the model on every call, so that setup is
  included; it is also shown on its own, from a call over no batches).

Each estimator gets one warm-up call on a single batch first, which also finds the
combinations BackPACK cannot handle (reported as ``unsupported (reason)``, never a crash).
An estimator whose warm-up batch predicts more than ``--budget`` seconds is timed on fewer
batches (the figure is per 1,000 images either way; the table says how many were used). The
baseline is timed again on exactly those batches, alternating with the estimator
``--repeats`` times (best of each kept), so that load from other processes on a shared
machine hits both sides of the ratio alike.
When a batch does not fit in memory (the exact GGN at 114 classes), diagonal_curvature goes on
in micro-batches; the table gives the samples per backward pass it settled on and, on CUDA,
the peak memory allocated.
Goal: ``ggn_mc`` ≤ 3× a forward+backward. On CUDA the defaults become the 224 px settings
of the H100 figures in ``benchmarks/README.md`` (batch 128, 114 classes). Examples::

    python benchmarks/bench_curvature.py                                   # CPU, 32 px
    python benchmarks/bench_curvature.py --device cuda --classes 8 114     # H100 presets
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

ESTIMATORS = ("ggn_exact", "ggn_mc", "hessian_exact", "fisher")
GOAL_GGN_MC = 3.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(n: int, batch_size: int, size: int, classes: int, device: torch.device,
                 seed: int = 0) -> list:
    from fairbench import Batch

    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn(b, 3, size, size, generator=g).to(device)
        y = torch.randint(0, classes, (b,), generator=g).to(device)
        out.append(Batch(x=x, y=y, g=None, index=torch.arange(start, start + b, device=device)))
    return out


def fwd_bwd(model: torch.nn.Module, batches: list, device: torch.device) -> float:
    model.eval()
    sync(device)
    t = time.perf_counter()
    for batch in batches:
        loss = F.cross_entropy(model(batch.x), batch.y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t


def curvature(model: torch.nn.Module, batches: list, estimator: str, scope: str,
              device: torch.device) -> float:
    from fairbench import diagonal_curvature

    sync(device)
    t = time.perf_counter()
    diagonal_curvature(model, batches, estimator=estimator, scope=scope)  # type: ignore[arg-type]
    sync(device)
    return time.perf_counter() - t


def setup_seconds(model: torch.nn.Module, estimator: str, scope: str,
                  device: torch.device) -> float:
    """The per-call setup (model copy + BackPACK extend): a call over no batches, which does
    the setup and then stops with 'empty set of samples'."""
    from fairbench import FairbenchError, diagonal_curvature
    from fairbench.core.errors import CurvatureError

    sync(device)
    t = time.perf_counter()
    try:
        diagonal_curvature(model, [], estimator=estimator, scope=scope)  # type: ignore[arg-type]
    except CurvatureError:
        raise
    except FairbenchError:
        pass
    sync(device)
    return time.perf_counter() - t


class MicroBatchLog(logging.Handler):
    """Records the micro-batch size that diagonal_curvature fell back to after running out of
    memory (its warning's last argument)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.smallest: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "micro-batches" in record.msg and record.args:
            size = int(record.args[-1])  # type: ignore[index]
            self.smallest = size if self.smallest is None else min(self.smallest, size)


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "out of memory" in text.lower():
        return "out of memory"
    return f"{type(exc).__name__}: {text[:110]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["smallcnn", "vgg11", "resnet18"])
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    ap.add_argument("--image-size", type=int, default=None, help="[CPU 32, CUDA 224]")
    ap.add_argument("--batch-size", type=int, default=None, help="[CPU 32, CUDA 128]")
    ap.add_argument("--n", type=int, default=None, help="images per timing [CPU 256, CUDA 1024]")
    ap.add_argument("--classes", type=int, nargs="+", default=None,
                    help="class counts to run [CPU 5, CUDA 8 114]")
    ap.add_argument("--scope", choices=["all", "conv_linear"], default="all")
    ap.add_argument("--repeats", type=int, default=2, help="alternating (fwd+bwd, estimator) timings; best of each kept")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds one estimator may take; fewer batches are timed beyond it")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = ap.parse_args()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = args.image_size or (224 if cuda else 32)
    bs = args.batch_size or (128 if cuda else 32)
    n = args.n or (1024 if cuda else 256)
    class_list = args.classes or ([8, 114] if cuda else [5])
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import backpack

    from fairbench import create_backbone

    print(f"device: {device} ({torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, BackPACK {getattr(backpack, '__version__', '?')}, "
          f"threads {torch.get_num_threads()}")
    print(f"{size} px, batch {bs}, {n} images per timing, fp32, eval mode, scope={args.scope}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    rows = []
    for classes in class_list:
        for name in args.backbones:
            torch.manual_seed(0)
            try:
                model = create_backbone(name, num_classes=classes, image_size=size).to(device)
            except Exception as exc:  # noqa: BLE001
                rows.append({"backbone": name, "classes": classes, "estimator": "fwd+bwd",
                             "status": f"unsupported ({reason_of(exc)})"})
                continue
            batches = make_batches(n, bs, size, classes, device)
            # warm-up until two passes agree within 15% (the first passes of a fresh process are
            # several times slower on CPU: oneDNN primitive caches, allocator growth)
            prev = fwd_bwd(model, batches, device)
            for _ in range(6):
                cur = fwd_bwd(model, batches, device)
                if abs(cur - prev) <= 0.15 * min(cur, prev):
                    break
                prev = cur
            base = min(fwd_bwd(model, batches, device) for _ in range(max(1, args.repeats)))
            base_per_k = base / n * 1000
            rows.append({"backbone": name, "classes": classes, "estimator": "fwd+bwd",
                         "status": "ok", "s_per_1000": base_per_k, "relative": 1.0,
                         "images": n})
            print(f"{name} ({classes} classes): fwd+bwd {base_per_k:.2f} s / 1000 img", flush=True)
            for est in args.estimators:
                row = {"backbone": name, "classes": classes, "estimator": est}
                micro = MicroBatchLog()
                logging.getLogger("fairbench.training.curvature").addHandler(micro)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    setup = setup_seconds(model, est, args.scope, device)
                    t_one = curvature(model, batches[:1], est, args.scope, device)  # warm-up
                    per_batch = max(1e-6, t_one - setup)
                    use = len(batches)
                    if per_batch * use > args.budget:
                        use = max(1, min(use, math.floor(args.budget / per_batch)))
                    part = batches[:use]
                    images = sum(len(b) for b in part)
                    # alternate baseline and estimator on the same batches: load from other
                    # processes then hits both alike
                    t_base, t_est = [], []
                    for _ in range(max(1, args.repeats)):
                        t_base.append(fwd_bwd(model, part, device))
                        t_est.append(curvature(model, part, est, args.scope, device))
                    per_k = min(t_est) / images * 1000
                    row.update(status="ok", s_per_1000=per_k,
                               relative=min(t_est) / min(t_base), images=images,
                               setup_s=setup, base_s_per_1000=min(t_base) / images * 1000)
                except Exception as exc:  # noqa: BLE001  (report, never crash)
                    row.update(status=f"unsupported ({reason_of(exc)})")
                    if cuda:
                        torch.cuda.empty_cache()
                logging.getLogger("fairbench.training.curvature").removeHandler(micro)
                row["micro_batch"] = micro.smallest or bs
                if cuda:
                    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                rows.append(row)
                status = (f"{row['relative']:.1f}× ({row['s_per_1000']:.2f} s / 1000 img)"
                          if row["status"] == "ok" else row["status"])
                print(f"  {est}: {status}", flush=True)
            del model, batches
            if cuda:
                torch.cuda.empty_cache()

    print("\n| backbone | classes | estimator | s per 1,000 img | × fwd+bwd | images timed | "
          "setup s (copy+extend) | fwd+bwd s / 1,000 img (paired) | samples per backward | "
          "peak GiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        micro = str(r.get("micro_batch", ""))
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else ""
        if r["status"] != "ok":
            print(f"| {r['backbone']} | {r['classes']} | {r['estimator']} | {r['status']} | | | | "
                  f"| {micro} | {peak} |")
            continue
        setup = f"{r['setup_s']:.2f}" if "setup_s" in r else ""
        paired = f"{r['base_s_per_1000']:.2f}" if "base_s_per_1000" in r else ""
        print(f"| {r['backbone']} | {r['classes']} | {r['estimator']} | {r['s_per_1000']:.2f} | "
              f"{r['relative']:.2f} | {r['images']} | {setup} | {paired} | {micro} | {peak} |")
    mc = [r for r in rows if r["estimator"] == "ggn_mc" and r["status"] == "ok"]
    if mc:
        worst = max(r["relative"] for r in mc)
        print(f"\nggn_mc: {statistics.mean(r['relative'] for r in mc):.2f}× mean, "
              f"{worst:.2f}× worst (goal ≤ {GOAL_GGN_MC:.0f}×): "
              f"{'meets' if worst <= GOAL_GGN_MC else 'MISSES'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "curvature", "device": str(device), "image_size": size,
                       "batch_size": bs, "n": n, "scope": args.scope, "rows": rows,
                       "loadavg": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
