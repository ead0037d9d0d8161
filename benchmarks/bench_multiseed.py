"""Training several seeds' models in one process step against separate steps, on CPU.

Issue 35 asks whether stacking seeds buys more seeds per core-second. This times one SGD
training step (forward, cross-entropy, backward, update) of ``K`` smallcnn models on batches of
``B`` images, four ways, each in the default (contiguous) and the channels-last memory format:

* **separate**: K ordinary models, one step each (what K runs of a sweep do);
* **vmap**: the K models' parameters stacked (``torch.func.stack_module_state``) and one
  ``vmap(grad(loss))`` step over them; BatchNorm without running statistics
  (``torch.func.replace_all_batch_norm_modules_``), as ``vmap`` needs;
* **grouped**: one model whose convolutions have ``groups=K`` (K independent channel blocks:
  the K models side by side, each block seeing its own images); its BatchNorm is per channel,
  so per model.

Only the time is compared (the stacked forms are not the trainer's code path). Measured on the
project's machine (2-core CPU, one thread, K=4, B=64, 32 px; ``python
benchmarks/bench_multiseed.py``, 2026-12-07, idle): separate 258 ms contiguous / 144 ms
channels-last, vmap 493 / 614 ms, grouped 250 / 179 ms per step of all four models: neither stacked form gives more
seeds per core-second than separate channels-last steps, so the sweep keeps one model per run.

Examples::

    python benchmarks/bench_multiseed.py
    python benchmarks/bench_multiseed.py --models 8 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import (
    functional_call,
    grad,
    replace_all_batch_norm_modules_,
    stack_module_state,
    vmap,
)

from fairbench.models.backbones import create_backbone

CLASSES = 5
LR = 0.01


def separate(k: int, x: torch.Tensor, y: torch.Tensor, fmt: torch.memory_format,
             size: int) -> Callable[[], None]:
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(create_backbone("smallcnn", num_classes=CLASSES, image_size=size)
                      .to(memory_format=fmt))
    xs = [x[i].contiguous(memory_format=fmt) for i in range(k)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in models]

    def step() -> None:
        for i, m in enumerate(models):
            loss = nn.functional.cross_entropy(m(xs[i]), y[i])
            opts[i].zero_grad()
            loss.backward()
            opts[i].step()
    return step


def stacked(k: int, x: torch.Tensor, y: torch.Tensor, fmt: torch.memory_format,
            size: int) -> Callable[[], None]:
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = create_backbone("smallcnn", num_classes=CLASSES, image_size=size)
        replace_all_batch_norm_modules_(m)
        models.append(m.to(memory_format=fmt))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)
    grads_of = vmap(grad(loss))

    def step() -> None:
        grads = grads_of(params, buffers, x, y)
        with torch.no_grad():
            for name in params:
                params[name] -= LR * grads[name]
    return step


def grouped(k: int, x: torch.Tensor, y: torch.Tensor, fmt: torch.memory_format,
            size: int) -> Callable[[], None]:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(k * i, k * o, 3, padding=1, bias=False, groups=k),
                nn.BatchNorm2d(k * o), nn.ReLU(), nn.MaxPool2d(2)]
    body = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), *block(128, 256),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(memory_format=fmt)
    head = nn.Conv1d(k * 256, k * CLASSES, 1, groups=k)
    batch = x.shape[1]
    xg = x.permute(1, 0, 2, 3, 4).reshape(batch, k * 3, size, size).contiguous(memory_format=fmt)
    opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=LR)

    def step() -> None:
        logits = head(body(xg).unsqueeze(-1)).view(batch, k, CLASSES)
        loss = nn.functional.cross_entropy(logits.reshape(-1, CLASSES), y.T.reshape(-1)) * k
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=4, help="K, the seeds trained together")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    k, size = args.models, args.image_size
    x = torch.randn(k, args.batch_size, 3, size, size)
    y = torch.randint(0, CLASSES, (k, args.batch_size))
    print(f"K={k} models, batch {args.batch_size}, {size} px, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    for fmt_name, fmt in (("contiguous", torch.contiguous_format),
                          ("channels_last", torch.channels_last)):
        for name, build in (("separate", separate), ("vmap", stacked), ("grouped", grouped)):
            step = build(k, x, y, fmt, size)
            for _ in range(2):
                step()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            ms = (time.perf_counter() - start) / args.steps * 1000
            print(f"{fmt_name:13s} {name:8s} {ms:7.1f} ms per step of all {k} models "
                  f"({ms / k:6.1f} ms per model)")


if __name__ == "__main__":
    main()
