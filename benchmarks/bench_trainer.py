"""Trainer epoch throughput (and prediction) against a bare PyTorch loop, in one process.

Both sides train the same architecture from the same initial weights on the same uint8 images
already in memory (on the GPU for CUDA), with the same batch size, optimizer (Adam, as the
default :class:`~fairbench.training.trainer.TrainConfig`) and, by default, the same on-device
augmentation cost (a random shift and two flips as one gather):

* **trainer**: :class:`fairbench.training.trainer.Trainer` ``.fit`` over a
  :class:`fairbench.data.loaders.BatchLoader` (shuffled, ``drop_last``, augmented, channels-last on
  CUDA), built as :meth:`fairbench.run.context.RunContext.loader` builds it, ``val=None`` (no
  per-epoch validation, so both sides do the same work). A second, informational row runs
  ``fit`` with a validation loader as ``RunContext.fit`` does (validation metrics and the
  best-checkpoint copy every epoch).
* **bare**: ``for idx in perm.split(B)``: gather, (augment), uint8 → float, normalise,
  forward, cross-entropy, ``zero_grad``, backward, ``step``; nothing else.

On CUDA both use bf16 autocast and channels-last; ``torch.cuda.synchronize()`` brackets every
timing. Warm-up epochs are excluded. The two sides are timed alternately ``--repeats`` times
(the best epoch time of each is used for the ratio; the median is shown as well) so load from
other processes hits both alike. Evaluation: ``Trainer.predict`` over a sequential loader
against a bare ``no_grad`` loop (normalise, forward, softmax, gather to host).

Goal: trainer throughput ≥ 0.9 × bare loop. Examples::

    python benchmarks/bench_trainer.py                       # CPU-sized synthderm, smallcnn
    python benchmarks/bench_trainer.py --backbone resnet18 --n-samples 1024
    python benchmarks/bench_trainer.py --preset fitzpatrick  # CUDA: 16.5k × 224 px, 114 classes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

PRESETS: dict[str, dict[str, Any]] = {
    # the GPU setting: a Fitzpatrick-17k-sized set at 224 px, 114 classes (GPU)
    "fitzpatrick": {"image_size": 224, "n_samples": 16500, "classes": 114, "batch_size": 256,
                    "backbone": "resnet18", "data": "random"},
    "fitzpatrick-vgg11": {"image_size": 224, "n_samples": 16500, "classes": 114,
                          "batch_size": 256, "backbone": "vgg11", "data": "random"},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    return torch.device(name)


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """uint8 N×H×W×3 images, labels and attributes: synthderm from the tensor cache
    (built once under $FAIRBENCH_CACHE) or random pixels (same cost to train on)."""
    n, size, classes = args.n_samples, args.image_size, args.classes
    if args.data == "synthderm" and classes <= 8:
        from fairbench.datasets.synthderm import SynthDerm

        from fairbench.data.cache import load_or_build

        adapter = SynthDerm(params={"n_samples": n, "n_classes": classes})
        table = adapter.build_table()
        cached = load_or_build(adapter, table, size, progress=False)
        images = np.asarray(cached.images)
        attrs = {k: table.attr(k) for k in table.attributes}
        return images, table.labels.astype(np.int64), attrs
    if args.data == "synthderm":
        print(f"(synthderm has at most 8 classes; using random images for {classes} classes)")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    return images, labels, {"group": rng.integers(0, 2, n).astype(np.int64)}


def make_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from fairbench import create_backbone

    torch.manual_seed(0)
    model = create_backbone(args.backbone, num_classes=args.classes, image_size=args.image_size)
    return model


# -- the bare loop -----------------------------------------------------------------------------
class BareLoop:
    """The minimal loop over the same uint8 images (NHWC on CUDA for channels-last, NCHW on
    CPU, which is the layout CPU convolutions want)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, model: torch.nn.Module,
                 device: torch.device, batch_size: int, augment: bool, lr: float,
                 weight_decay: float, shift: int) -> None:
        from fairbench.data.loaders import MEAN, STD

        self.cuda = device.type == "cuda"
        self.device = device
        self.images = images  # N×H×W×3 uint8 on the device
        self.nchw = None if self.cuda else images.permute(0, 3, 1, 2).contiguous()
        self.labels = labels
        self.model = model.to(device)
        if self.cuda:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.bs = batch_size
        self.augment = augment
        self.shift = shift
        self.scale = (1.0 / (torch.tensor(STD, device=device) * 255.0)).view(1, 3, 1, 1)
        self.offset = (-torch.tensor(MEAN, device=device) / torch.tensor(STD, device=device)
                       ).view(1, 3, 1, 1)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(0)

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.augment:
            if self.cuda:
                return self.images[idx].permute(0, 3, 1, 2).float()
            return self.nchw[idx].float()  # type: ignore[index]
        # a random shift (edge-clamped) and flips, as one gather (the same work as the loader)
        u8 = self.images[idx]
        b, h, w, _ = u8.shape
        s, dev, g = self.shift, self.device, self.gen
        rows = (torch.arange(h, device=dev) + torch.randint(-s, s + 1, (b, 1), device=dev,
                                                            generator=g)).clamp_(0, h - 1)
        cols = (torch.arange(w, device=dev) + torch.randint(-s, s + 1, (b, 1), device=dev,
                                                            generator=g)).clamp_(0, w - 1)
        fr = torch.rand((b, 1), device=dev, generator=g) < 0.5
        fc = torch.rand((b, 1), device=dev, generator=g) < 0.5
        rows = torch.where(fr, h - 1 - rows, rows)
        cols = torch.where(fc, w - 1 - cols, cols)
        out = u8[torch.arange(b, device=dev).view(b, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)]
        x = out.permute(0, 3, 1, 2).float()
        return x if self.cuda else x.contiguous()

    def epoch(self) -> int:
        model, opt = self.model, self.opt
        model.train()
        n = self.images.shape[0]
        perm = torch.randperm(n, device=self.device)
        done = 0
        for idx in perm.split(self.bs):
            if len(idx) < self.bs:  # drop_last, as the trainer's loader
                break
            x = torch.addcmul(self.offset, self._batch(idx), self.scale)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), self.labels[idx])
            else:
                loss = F.cross_entropy(model(x), self.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += len(idx)
        return done

    @torch.no_grad()
    def predict(self, batch_size: int) -> np.ndarray:
        model = self.model
        model.eval()
        out = []
        for idx in torch.arange(self.images.shape[0], device=self.device).split(batch_size):
            if self.cuda:
                x = torch.addcmul(self.offset, self.images[idx].permute(0, 3, 1, 2).float(),
                                  self.scale).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = model(x)
            else:
                x = torch.addcmul(self.offset, self.nchw[idx].float(), self.scale)  # type: ignore[index]
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1))
        model.train()
        return torch.cat(out).cpu().numpy()


# -- timing helpers ----------------------------------------------------------------------------
def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="the Fitzpatrick-17k-sized GPU settings (flags given explicitly still win)")
    ap.add_argument("--backbone", default="smallcnn", help="smallcnn, resnet18, vgg11, ...")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--n-samples", type=int, default=3000, help="training images per epoch")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per repeat")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs per side")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating timed rounds (bare, trainer) per side")
    ap.add_argument("--data", choices=["synthderm", "random"], default="synthderm")
    ap.add_argument("--no-augment", action="store_true", help="no crop/flip on either side")
    ap.add_argument("--no-val-row", action="store_true",
                    help="skip the informational fit-with-validation row")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile on both sides: the bare loop's model, and the "
                         "trainer's own TrainConfig.compile (compile time reported)")
    ap.add_argument("--keep-on-host", action="store_true",
                    help="the trainer's images stay in host memory (pinned, copied one batch "
                         "ahead on a side stream), as for a dataset too big for the GPU; the "
                         "bare loop keeps its images on the device")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler table of one trainer epoch")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = ap.parse_args()
    if args.preset:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in sys.argv[1:]}
        for k, v in PRESETS[args.preset].items():
            if k not in given:
                setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)

    from fairbench import BatchLoader, TrainConfig
    from fairbench.data.loaders import Augment, DeviceData
    from fairbench.training.trainer import Trainer

    device = resolve_device(args.device)
    images_np, labels_np, attrs_np = load_images(args)
    n, size = images_np.shape[0], images_np.shape[1]
    augment = not args.no_augment
    shift = max(1, size // 8)  # as RunContext.loader
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, augment=augment,
                      select="last", eval_batch_size=args.eval_batch_size,
                      compile=args.compile)
    data = DeviceData(images_np, labels_np, attrs_np, device, keep_on_host=args.keep_on_host)
    attribute = next(iter(attrs_np))
    channels_last = device.type == "cuda" and cfg.channels_last
    positions = np.arange(n)

    def train_loader(seed: int) -> BatchLoader:
        loader = BatchLoader(data, positions, batch_size=cfg.batch_size, attribute=attribute,
                             order="shuffle", drop_last=n > cfg.batch_size,
                             augment=Augment(max_shift=shift) if augment else None,
                             seed=seed, channels_last=channels_last)
        return loader

    val_n = max(cfg.batch_size, n // 5)  # a val part the size RunContext's split gives
    val_loader = BatchLoader(data, positions[:val_n], batch_size=cfg.eval_batch_size,
                             attribute=attribute, order="sequential", channels_last=channels_last)
    val_loader.group_names = [str(i) for i in range(int(attrs_np[attribute].max()) + 1)]  # type: ignore[attr-defined]
    eval_loader = BatchLoader(data, positions, batch_size=cfg.eval_batch_size,
                              attribute=attribute, order="sequential", channels_last=channels_last)

    base = make_model(args, device)
    bare_model = copy.deepcopy(base)
    tr_model = copy.deepcopy(base)
    trainer = Trainer(device, seed=0, progress=False)
    trainer.prepare(tr_model, cfg)
    bare_images = data.images if data.on_device else torch.from_numpy(images_np).to(device)
    bare = BareLoop(bare_images, data.labels, bare_model, device, cfg.batch_size, augment,
                    cfg.lr, cfg.weight_decay, shift)
    compile_s: dict[str, float] = {}
    if args.compile:
        bare.model = torch.compile(bare.model)  # type: ignore[assignment]

    per_epoch = (n // cfg.batch_size) * cfg.batch_size if n > cfg.batch_size else n
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"backbone {args.backbone}, {size} px, {n} images ({args.data}), {args.classes} classes, "
          f"batch {cfg.batch_size}, augment {'on' if augment else 'off'}, "
          f"{'bf16 autocast + channels-last' if device.type == 'cuda' else 'fp32 NCHW'}"
          f"{', torch.compile' if args.compile else ''}"
          f"{'; trainer images in host memory' if not data.on_device else ''}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.warmup} warm-up epoch(s), {args.repeats} × {args.epochs} timed epochs per side\n")

    # warm-up (includes compilation when --compile)
    t, _ = timed(lambda: [bare.epoch() for _ in range(max(1, args.warmup))], device)
    compile_s["bare_warmup_s"] = t
    warm_cfg = copy.copy(cfg)
    warm_cfg.epochs = max(1, args.warmup)
    t, _ = timed(lambda: trainer.fit(tr_model, train_loader(1), None, config=warm_cfg), device)
    compile_s["trainer_warmup_s"] = t

    bare_times: list[float] = []
    trainer_times: list[float] = []
    for r in range(args.repeats):
        t, _ = timed(lambda: [bare.epoch() for _ in range(args.epochs)], device)
        bare_times.append(t / args.epochs)
        loader = train_loader(100 + r)
        t, _ = timed(lambda: trainer.fit(tr_model, loader, None, config=cfg), device)
        trainer_times.append(t / args.epochs)

    val_times: list[float] = []
    if not args.no_val_row:
        vcfg = copy.copy(cfg)
        vcfg.select = "F1"
        for r in range(max(1, args.repeats - 1)):
            loader = train_loader(200 + r)
            t, _ = timed(lambda: trainer.fit(tr_model, loader, val_loader, config=vcfg), device)
            val_times.append(t / args.epochs)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        one = copy.copy(cfg)
        one.epochs = 1
        with profile(activities=acts) as prof:
            trainer.fit(tr_model, train_loader(300), None, config=one)
            sync(device)
        key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25))

    # evaluation
    pred_bare, pred_tr = [], []
    bare.predict(cfg.eval_batch_size)
    trainer.predict(tr_model, eval_loader, cfg)
    for _ in range(args.repeats):
        t, _ = timed(lambda: bare.predict(cfg.eval_batch_size), device)
        pred_bare.append(t)
        t, _ = timed(lambda: trainer.predict(tr_model, eval_loader, cfg), device)
        pred_tr.append(t)

    def rate(times: list[float], count: int) -> tuple[float, float]:
        return count / min(times), count / statistics.median(times)

    rows = []
    b_best, b_med = rate(bare_times, per_epoch)
    t_best, t_med = rate(trainer_times, per_epoch)
    rows.append(("train: bare loop", b_best, b_med, min(bare_times), 1.0))
    rows.append(("train: Trainer.fit", t_best, t_med, min(trainer_times), t_best / b_best))
    if val_times:
        v_best, v_med = rate(val_times, per_epoch)
        rows.append((f"train: Trainer.fit + val ({val_n} img)/epoch (info)", v_best, v_med,
                     min(val_times), v_best / b_best))
    pb_best, pb_med = rate(pred_bare, n)
    pt_best, pt_med = rate(pred_tr, n)
    rows.append(("predict: bare no_grad loop", pb_best, pb_med, min(pred_bare), 1.0))
    rows.append(("predict: Trainer.predict", pt_best, pt_med, min(pred_tr), pt_best / pb_best))

    print("| loop | images/s (best) | images/s (median) | s per epoch / pass (best) | ratio vs bare |")
    print("|---|---:|---:|---:|---:|")
    for name, best, med, secs, ratio in rows:
        print(f"| {name} | {best:,.0f} | {med:,.0f} | {secs:.3f} | {ratio:.3f} |")
    train_ratio = t_best / b_best
    pred_ratio = pt_best / pb_best
    print(f"\ntrainer/bare throughput ratio: train {train_ratio:.3f}, predict {pred_ratio:.3f} "
          f"(goal ≥ 0.90): {'meets' if min(train_ratio, pred_ratio) >= 0.9 else 'MISSES'}")
    if args.compile:
        print(f"warm-up incl. compilation: bare {compile_s['bare_warmup_s']:.1f} s, trainer "
              f"{compile_s['trainer_warmup_s']:.1f} s (steady epoch: bare {min(bare_times):.2f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "trainer", "args": vars(args), "device": str(device),
                       "per_epoch_images": per_epoch,
                       "bare_epoch_s": bare_times, "trainer_epoch_s": trainer_times,
                       "trainer_val_epoch_s": val_times, "predict_bare_s": pred_bare,
                       "predict_trainer_s": pred_tr, "train_ratio": train_ratio,
                       "predict_ratio": pred_ratio, "warmup_s": compile_s,
                       "loadavg": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
