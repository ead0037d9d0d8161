"""Diagonal-curvature cost: each estimator of :func:`fairbench.training.curvature.diagonal_curvature`
per 1,000 images, relative to one plain forward+backward pass over the same images, next to
the estimator's floor.

For every backbone and estimator (``ggn_exact``, ``ggn_mc``, ``hessian_exact``, ``fisher``)
and engine (``--engines``: ``auto`` is what fairbench uses, ``autograd`` and ``backpack`` force
one; see ``fairbench.training.curvature.ENGINES``) the same batches (random normalised images
and labels, ``--batch-size`` each, already on the device) go through

* **fwd+bwd**: the plain baseline: model in eval mode, fp32, cross-entropy, ``backward()``
  into every parameter (no optimizer step), the forward and the backward timed apart;
* **diagonal_curvature(..., estimator=E, scope=S)**: the call FairQuantize/FairPrune make,
  timed whole (model copy and set-up included).

**Floor** (``benchmarks/README.md`` derives it): the exact GGN needs one forward and one
backward per class, ``(F + C·B) / (F + B)`` forward+backwards with F and B the measured
forward and backward times; ``ggn_mc`` (``mc_samples`` 1) and ``fisher`` need one forward and
one backward (1×) plus the per-sample squares; ``hessian_exact`` has none stated.

Each estimator gets one warm-up call on a single batch first, which also finds the
combinations that are not supported (reported as ``unsupported (reason)``, never a crash).
An estimator whose warm-up batch predicts more than ``--budget`` seconds is timed on fewer
batches (the figure is per 1,000 images either way; the table says how many were used). The
baseline is timed again on exactly those batches, alternating with the estimator ``--repeats``
times (best of each kept), so that load from other processes on a shared machine hits both
sides of the ratio alike.
When a batch does not fit in memory (the exact GGN at 114 classes), diagonal_curvature goes on
in micro-batches; the table gives the samples per backward pass it settled on and, on CUDA,
the peak memory allocated.
Goals: ``ggn_mc`` ≤ 2× and ``fisher`` ≤ 3× a forward+backward; ``ggn_exact`` within 1.3× of its
floor. On CUDA the defaults become the 224 px settings of the H100 figures in
``benchmarks/README.md`` (batch 128, 114 classes). Examples::

    python benchmarks/bench_curvature.py                                   # CPU, 32 px
    python benchmarks/bench_curvature.py --engines autograd backpack       # both engines
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
ENGINES = ("auto", "autograd", "backpack")
#: goal per estimator: ("fwd+bwd", bound) is a bound on the multiple of a forward+backward,
#: ("floor", bound) on the multiple of the floor
GOALS = {"ggn_mc": ("fwd+bwd", 2.0), "fisher": ("fwd+bwd", 3.0), "ggn_exact": ("floor", 1.3)}


#: the clock every timing reads: wall time, or with ``--clock cpu`` this process's CPU time
#: (user + system, all threads), which on a shared machine counts only this process's work
CLOCK = {"now": time.perf_counter}


def now() -> float:
    return CLOCK["now"]()


def set_clock(clock: str, device: torch.device) -> None:
    """``--clock cpu``: every timing reads this process's CPU time (the host's only, so not
    with CUDA); ``wall``: the wall clock."""
    if clock == "cpu":
        if device.type == "cuda":
            sys.exit("--clock cpu times the host only; use --clock wall on CUDA")
        CLOCK["now"] = time.process_time


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


def fwd_bwd(model: torch.nn.Module, batches: list, device: torch.device) -> tuple[float, float]:
    """Seconds of the forward passes and of the backward passes over ``batches``."""
    model.eval()
    t_fwd = t_bwd = 0.0
    for batch in batches:
        sync(device)
        t = now()
        loss = F.cross_entropy(model(batch.x), batch.y)
        sync(device)
        t_mid = now()
        loss.backward()
        sync(device)
        t_end = now()
        t_fwd += t_mid - t
        t_bwd += t_end - t_mid
        model.zero_grad(set_to_none=True)
    return t_fwd, t_bwd


def floor_multiple(estimator: str, classes: int, t_fwd: float, t_bwd: float) -> float | None:
    """The floor as a multiple of one forward+backward (module docstring)."""
    if estimator == "ggn_exact":
        return (t_fwd + classes * t_bwd) / (t_fwd + t_bwd)
    if estimator in ("ggn_mc", "fisher"):
        return 1.0
    return None


def curvature(model: torch.nn.Module, batches: list, estimator: str, scope: str, engine: str,
              device: torch.device) -> float:
    import fairbench.training.curvature as C

    saved = dict(C.ENGINES)
    if engine != "auto":
        C.ENGINES[estimator] = engine
    try:
        sync(device)
        t = now()
        C.diagonal_curvature(model, batches, estimator=estimator, scope=scope)  # type: ignore[arg-type]
        sync(device)
        return now() - t
    finally:
        C.ENGINES.clear()
        C.ENGINES.update(saved)


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


def verdicts(rows: list[dict]) -> list[str]:
    """One line per estimator with a goal: mean and worst over the rows of fairbench's engine."""
    out = []
    for est, (against, bound) in GOALS.items():
        key = "relative" if against == "fwd+bwd" else "of_floor"
        values = [r[key] for r in rows if r["estimator"] == est and r["status"] == "ok"
                  and r.get("engine") in ("auto", "autograd") and r.get(key) is not None]
        if values:
            worst = max(values)
            out.append(f"{est}: {statistics.mean(values):.2f}× mean, {worst:.2f}× worst "
                       f"{'a forward+backward' if against == 'fwd+bwd' else 'its floor'} "
                       f"(goal ≤ {bound:g}×): {'meets' if worst <= bound else 'MISSES'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["smallcnn", "vgg11", "resnet18"])
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    ap.add_argument("--engines", nargs="+", default=["auto"], choices=ENGINES,
                    help="auto: fairbench's choice per estimator; autograd/backpack: forced")
    ap.add_argument("--image-size", type=int, default=None, help="[CPU 32, CUDA 224]")
    ap.add_argument("--batch-size", type=int, default=None, help="[CPU 32, CUDA 128]")
    ap.add_argument("--n", type=int, default=None, help="images per timing [CPU 256, CUDA 1024]")
    ap.add_argument("--classes", type=int, nargs="+", default=None,
                    help="class counts to run [CPU 5, CUDA 8 114]")
    ap.add_argument("--scope", choices=["all", "conv_linear"], default="all")
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternating (fwd+bwd, estimator) timings; best of each kept")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds one estimator may take; fewer batches are timed beyond it")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (CPU device only; with --threads 1 it "
                         "is the work done, whatever else the machine runs)")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = ap.parse_args()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    set_clock(args.clock, device)
    size = args.image_size or (224 if cuda else 32)
    bs = args.batch_size or (128 if cuda else 32)
    n = args.n or (1024 if cuda else 256)
    class_list = args.classes or ([8, 114] if cuda else [5])
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from importlib.metadata import version

    from fairbench import create_backbone

    print(f"device: {device} ({torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, BackPACK {version('backpack-for-pytorch')}, "
          f"threads {torch.get_num_threads()}")
    print(f"{size} px, batch {bs}, {n} images per timing, fp32, eval mode, scope={args.scope}, "
          f"{args.clock} clock")
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
            prev = sum(fwd_bwd(model, batches, device))
            for _ in range(6):
                cur = sum(fwd_bwd(model, batches, device))
                if abs(cur - prev) <= 0.15 * min(cur, prev):
                    break
                prev = cur
            base = min(sum(fwd_bwd(model, batches, device)) for _ in range(max(1, args.repeats)))
            base_per_k = base / n * 1000
            rows.append({"backbone": name, "classes": classes, "estimator": "fwd+bwd",
                         "status": "ok", "s_per_1000": base_per_k, "relative": 1.0,
                         "images": n})
            print(f"{name} ({classes} classes): fwd+bwd {base_per_k:.2f} s / 1000 img", flush=True)
            for est in args.estimators:
                for engine in args.engines:
                    row = {"backbone": name, "classes": classes, "estimator": est,
                           "engine": engine}
                    micro = MicroBatchLog()
                    logging.getLogger("fairbench.training.curvature").addHandler(micro)
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    try:
                        t_one = curvature(model, batches[:1], est, args.scope, engine, device)
                        use = len(batches)
                        if t_one * use > args.budget:
                            use = max(1, min(use, math.floor(args.budget / t_one)))
                        part = batches[:use]
                        images = sum(len(b) for b in part)
                        # alternate baseline and estimator on the same batches: load from
                        # other processes then hits both alike
                        t_f, t_b, t_est = [], [], []
                        for _ in range(max(1, args.repeats)):
                            f, b = fwd_bwd(model, part, device)
                            t_f.append(f)
                            t_b.append(b)
                            t_est.append(curvature(model, part, est, args.scope, engine, device))
                        fb = min(t_f) + min(t_b)
                        floor = floor_multiple(est, classes, min(t_f), min(t_b))
                        rel = min(t_est) / fb
                        row.update(status="ok", s_per_1000=min(t_est) / images * 1000,
                                   relative=rel, images=images,
                                   base_s_per_1000=fb / images * 1000,
                                   bwd_share=min(t_b) / fb, floor=floor,
                                   of_floor=rel / floor if floor else None)
                    except Exception as exc:  # noqa: BLE001  (report, never crash)
                        row.update(status=f"unsupported ({reason_of(exc)})")
                        if cuda:
                            torch.cuda.empty_cache()
                    logging.getLogger("fairbench.training.curvature").removeHandler(micro)
                    row["micro_batch"] = micro.smallest or bs
                    if cuda:
                        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    rows.append(row)
                    status = (f"{row['relative']:.2f}× ({row['s_per_1000']:.2f} s / 1000 img)"
                              if row["status"] == "ok" else row["status"])
                    print(f"  {est} [{engine}]: {status}", flush=True)
            del model, batches
            if cuda:
                torch.cuda.empty_cache()

    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| backbone | classes | estimator | engine | s per 1,000 img | × fwd+bwd | floor × | "
          "× floor | images timed | fwd+bwd s / 1,000 img (paired) | backward share | "
          "samples per backward | peak GiB |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        micro = str(r.get("micro_batch", ""))
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else ""
        engine = r.get("engine", "")
        if r["status"] != "ok":
            print(f"| {r['backbone']} | {r['classes']} | {r['estimator']} | {engine} | "
                  f"{r['status']} | | | | | | | {micro} | {peak} |")
            continue
        paired = f"{r['base_s_per_1000']:.2f}" if "base_s_per_1000" in r else ""
        floor = f"{r['floor']:.2f}" if r.get("floor") else ""
        of_floor = f"{r['of_floor']:.2f}" if r.get("of_floor") else ""
        share = f"{r['bwd_share']:.2f}" if "bwd_share" in r else ""
        print(f"| {r['backbone']} | {r['classes']} | {r['estimator']} | {engine} | "
              f"{r['s_per_1000']:.2f} | {r['relative']:.2f} | {floor} | {of_floor} | "
              f"{r['images']} | {paired} | {share} | {micro} | {peak} |")
    lines = verdicts(rows)
    if lines:
        print()
        for line in lines:
            print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "curvature", "device": str(device), "image_size": size,
                       "batch_size": bs, "n": n, "scope": args.scope, "rows": rows,
                       "threads": torch.get_num_threads(), "clock": args.clock,
                       "loadavg": os.getloadavg()},
                      fh, indent=2)


if __name__ == "__main__":
    main()
