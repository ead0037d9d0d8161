"""FairQuantize's curvature pass as the released code runs it, side by side with fairbench's.

**Released recipe** (``quantize.py`` of github.com/guoyb17/FairQuantize): the network copied
and put in eval mode, ``backpack.extend(net, use_converter=True)``, an extended
``CrossEntropyLoss`` (mean), BackPACK's ``DiagGGNExact`` for every parameter, batches of 4, the
diagonals summed over batches. **fairbench**: ``diagonal_curvature(net, batches,
estimator="ggn_exact")`` on the same batches. Both are timed whole (copy and set-up included),
alternating with a plain forward+backward of the same batches (``--repeats`` times, best of
each), on random images and labels.

Reported per backbone and class count: seconds per image, the multiple of one forward+backward
(model in eval mode, fp32, cross-entropy, ``backward()`` into every parameter) and the floor of
the exact GGN diagonal, one forward and one backward per class: ``(F + C·B) / (F + B)`` with
the measured forward and backward times F and B (``benchmarks/README.md`` derives it). The
last column checks that both give the same curvature (largest difference over the scored
weights, relative to each tensor's largest entry).

    python benchmarks/bench_released_recipe.py                      # VGG-11, ResNet-18; 114, 8
    python benchmarks/bench_released_recipe.py --clock cpu --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import warnings

import torch
from bench_curvature import floor_multiple, fwd_bwd, now, set_clock  # this folder: the same clock and timing
from torch import nn


def released_pass(model: nn.Module, batches: list) -> dict[int, torch.Tensor]:
    """``quantize.py``'s second-derivative pass: per parameter, the sum over batches of
    BackPACK's DiagGGNExact of the batch-mean cross-entropy; keyed by the index of the
    parameter in ``model.parameters()``."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact

    snet = copy.deepcopy(model).eval()
    order = {id(p): i for i, p in enumerate(snet.parameters())}
    snet = extend(snet, use_converter=True)
    loss_fn = extend(nn.CrossEntropyLoss())
    out: dict[int, torch.Tensor] = {}
    for batch in batches:
        snet.zero_grad()
        with backpack(DiagGGNExact()):
            loss_fn(snet(batch.x), batch.y).backward()
        for p in snet.parameters():
            i = order[id(p)]
            value = p.diag_ggn_exact.detach()
            out[i] = value if i not in out else out[i] + value
    return out


def fairbench_pass(model: nn.Module, batches: list) -> dict[int, torch.Tensor]:
    from fairbench import diagonal_curvature

    got = diagonal_curvature(model, batches, estimator="ggn_exact")
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return {index[name]: value for name, value in got.items()}


def timed(fn, *args) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    t = now()
    result = fn(*args)
    return now() - t, result


def largest_difference(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> float:
    """Largest |a − b| over the tensors both have, relative to the tensor's largest |a|."""
    worst = 0.0
    for i in set(a) & set(b):
        scale = float(a[i].abs().max())
        if scale > 0:
            worst = max(worst, float((a[i] - b[i]).abs().max()) / scale)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["vgg11", "tv_resnet18"],
                    help="the paper backbones, built as the released code builds them")
    ap.add_argument("--classes", type=int, nargs="+", default=[114, 8])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4, help="the released default")
    ap.add_argument("--n", type=int, default=8, help="images per timing")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (CPU device only)")
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args()
    device = torch.device(args.device)
    set_clock(args.clock, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from importlib.metadata import version

    from fairbench import Batch, create_backbone

    print(f"device: {device} ({platform.machine()}), torch {torch.__version__}, BackPACK "
          f"{version('backpack-for-pytorch')}, threads {torch.get_num_threads()}, "
          f"{args.clock} clock")
    print(f"{args.image_size} px, batch {args.batch_size}, {args.n} images per timing, fp32")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    rows = []
    for classes in args.classes:
        for name in args.backbones:
            torch.manual_seed(0)
            model = create_backbone(name, num_classes=classes,
                                    image_size=args.image_size).to(device).eval()
            g = torch.Generator().manual_seed(0)
            batches = []
            for start in range(0, args.n, args.batch_size):
                b = min(args.batch_size, args.n - start)
                batches.append(Batch(
                    x=torch.randn(b, 3, args.image_size, args.image_size, generator=g).to(device),
                    y=torch.randint(0, classes, (b,), generator=g).to(device), g=None,
                    index=torch.arange(start, start + b)))
            for _ in range(3):  # warm-up
                fwd_bwd(model, batches, device)
            released_pass(model, batches[:1])
            fairbench_pass(model, batches[:1])
            t_f, t_b, t_rel, t_fb = [], [], [], []
            h_rel = h_fb = {}
            for _ in range(max(1, args.repeats)):
                f, b = fwd_bwd(model, batches, device)
                t_f.append(f)
                t_b.append(b)
                t, h_rel = timed(released_pass, model, batches)
                t_rel.append(t)
                t, h_fb = timed(fairbench_pass, model, batches)
                t_fb.append(t)
            base = min(t_f) + min(t_b)
            floor = floor_multiple("ggn_exact", classes, min(t_f), min(t_b))
            row = {"backbone": name, "classes": classes, "images": args.n,
                   "fwd_bwd_s_per_image": base / args.n,
                   "released_s_per_image": min(t_rel) / args.n,
                   "released_x": min(t_rel) / base,
                   "fairbench_s_per_image": min(t_fb) / args.n,
                   "fairbench_x": min(t_fb) / base, "floor_x": floor,
                   "speedup": min(t_rel) / min(t_fb),
                   "max_rel_diff": largest_difference(h_rel, h_fb)}
            rows.append(row)
            print(f"{name} ({classes} classes): released {row['released_x']:.1f}×, fairbench "
                  f"{row['fairbench_x']:.1f}×, floor {floor:.1f}× a forward+backward", flush=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| backbone | classes | fwd+bwd s/img | released (BackPACK, batch "
          f"{args.batch_size}) s/img | × fwd+bwd | fairbench s/img | × fwd+bwd | floor × "
          "fwd+bwd | fairbench × floor | released / fairbench | largest rel. difference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backbone']} | {r['classes']} | {r['fwd_bwd_s_per_image']:.4f} | "
              f"{r['released_s_per_image']:.3f} | {r['released_x']:.1f} | "
              f"{r['fairbench_s_per_image']:.3f} | {r['fairbench_x']:.1f} | {r['floor_x']:.1f} | "
              f"{r['fairbench_x'] / r['floor_x']:.2f} | {r['speedup']:.2f} | "
              f"{r['max_rel_diff']:.1e} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "released_recipe", "device": str(device),
                       "image_size": args.image_size, "batch_size": args.batch_size,
                       "threads": torch.get_num_threads(), "clock": args.clock,
                       "rows": rows, "loadavg": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
