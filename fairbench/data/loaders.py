"""Batches from the tensor cache, with augmentation on the device.

:class:`DeviceData` holds one dataset's uint8 images, labels and attributes as tensors, on the
accelerator when they fit in half its free memory. Otherwise the images stay in host memory:
each batch is gathered into a pinned buffer and copied on a side CUDA stream one batch ahead
of the model, so the copy overlaps the model's work instead of stalling it.
:class:`BatchLoader` iterates over a subset of rows in sequential, shuffled or balanced order
(equal counts per stratum in every batch, up to one row, e.g. per group or per group ×
class; batches keep their configured size and an epoch its length whatever the number of
strata), and turns the uint8 NHWC rows into normalised float NCHW batches; random crops and
flips are one gather on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

Order = Literal["sequential", "shuffle", "balanced"]


@dataclass
class Batch:
    """One batch: ``x`` (B×3×H×W float), ``y`` (labels), ``g`` (group codes of the attribute
    in use, or None where the attribute is withheld), ``index`` (row positions in the table),
    ``mask`` (segmentation masks or None) and every attribute in ``attrs``."""

    x: torch.Tensor
    y: torch.Tensor
    g: torch.Tensor | None
    index: torch.Tensor
    mask: torch.Tensor | None = None
    attrs: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])


class DeviceData:
    """Images (N×H×W×3 uint8), labels and attributes of one dataset as tensors."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        attrs: dict[str, np.ndarray],
        device: torch.device,
        masks: np.ndarray | None = None,
        *,
        max_device_fraction: float = 0.5,
        keep_on_host: bool = False,
    ) -> None:
        self.device = device
        nbytes = images.nbytes + (masks.nbytes if masks is not None else 0)
        on_device = device.type == "cpu"
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            on_device = nbytes <= max_device_fraction * free
        self.on_device = on_device and not keep_on_host
        self.pinned = device.type == "cuda" and not self.on_device
        target = device if self.on_device else torch.device("cpu")
        # host-resident data: batches are gathered into pinned buffers and copied on a side
        # stream, one batch ahead of the model (BatchLoader)
        self.copy_stream = torch.cuda.Stream(device) if self.pinned else None

        def put(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.array(a, copy=True))  # off the read-only memmap
            return t.to(target)

        self.images = put(images)
        self.masks = put(masks) if masks is not None else None
        self.labels = torch.as_tensor(np.array(labels), dtype=torch.long, device=device)
        self.attrs = {k: torch.as_tensor(np.array(v), dtype=torch.long, device=device)
                      for k, v in attrs.items()}
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255.0

    def stage(self, positions: np.ndarray) -> Staged:
        """Rows ``positions`` of host-resident images (and masks) gathered into one buffer
        (pinned on CUDA) and, on CUDA, copied to the device on :attr:`copy_stream` without
        waiting; :meth:`Staged.ready` hands them over to the current stream."""
        index = torch.from_numpy(np.asarray(positions, dtype=np.int64))

        def gather(src: torch.Tensor) -> torch.Tensor:
            buf = torch.empty((len(index), *src.shape[1:]), dtype=src.dtype,
                              pin_memory=self.pinned)
            return torch.index_select(src, 0, index, out=buf)

        u8 = gather(self.images)
        mask = gather(self.masks) if self.masks is not None else None
        if self.copy_stream is None:
            return Staged(u8.to(self.device), None if mask is None else mask.to(self.device))
        with torch.cuda.stream(self.copy_stream):
            u8 = u8.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True) if mask is not None else None
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return Staged(u8, mask, done)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Staged:
    """One batch's uint8 images (and masks) on their way to the device (see
    :meth:`DeviceData.stage`)."""

    images: torch.Tensor
    masks: torch.Tensor | None
    copied: torch.cuda.Event | None = None

    def ready(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tensors, usable on the current stream (it waits for their copy; the caching
        allocator is told they are used there, so their memory is not reused too early)."""
        if self.copied is not None:
            current = torch.cuda.current_stream(self.images.device)
            current.wait_event(self.copied)
            self.images.record_stream(current)
            if self.masks is not None:
                self.masks.record_stream(current)
        return self.images, self.masks


@dataclass(frozen=True)
class Augment:
    """Random crop (shift up to ``max_shift`` px, edge-replicated) and horizontal/vertical flips.

    Skin-lesion images have no canonical orientation, so both flips are on by default.
    """

    max_shift: int = 4
    hflip: bool = True
    vflip: bool = True


def stratum_counts(n_strata: int, batch_size: int, n_batches: int,
                   rng: np.random.Generator) -> np.ndarray:
    """How many rows of each stratum every batch holds (``n_batches`` × ``n_strata``).

    Each batch holds ``batch_size`` rows: ``batch_size // n_strata`` of every stratum, and the
    ``batch_size % n_strata`` rows left over go to distinct strata, each time to those that
    have had the fewest left-over rows so far (ties broken at random). So every batch has
    exactly ``batch_size`` rows, no stratum differs from another by more than one row within a
    batch, and over the epoch every stratum gets the same number of rows up to one: the
    expected composition of weighted sampling with weights 1 / (stratum size), whatever the
    number of strata (more strata than rows in a batch included)."""
    base, rest = divmod(batch_size, n_strata)
    counts = np.full((n_batches, n_strata), base, dtype=np.int64)
    if rest:
        extra = np.zeros(n_strata, dtype=np.int64)
        for b in range(n_batches):
            chosen = np.lexsort((rng.random(n_strata), extra))[:rest]
            counts[b, chosen] += 1
            extra[chosen] += 1
    return counts


def balanced_order(strata: np.ndarray, batch_size: int, n_batches: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Positions (into ``strata``) for ``n_batches`` batches of exactly ``batch_size`` rows with
    (near-)equal counts per stratum in each batch (:func:`stratum_counts`).

    Each stratum is walked in fresh random permutations (small strata are repeated), so every
    sample of a stratum is seen before any is seen twice; the rows of each batch are then
    shuffled. Returns ``n_batches * batch_size`` positions, batch after batch.
    """
    keys, inverse = np.unique(strata, return_inverse=True)
    counts = stratum_counts(len(keys), batch_size, n_batches, rng)
    # the stratum of every slot, batch after batch (strata in key order inside a batch)
    slot_stratum = np.repeat(np.tile(np.arange(len(keys)), n_batches), counts.reshape(-1))
    out = np.empty(len(slot_stratum), dtype=np.int64)
    for k in range(len(keys)):
        members = np.flatnonzero(inverse == k)
        slots = np.flatnonzero(slot_stratum == k)
        if len(slots) == 0:
            continue
        reps = -(-len(slots) // len(members))
        stream = np.concatenate([members[rng.permutation(len(members))] for _ in range(reps)])
        out[slots] = stream[:len(slots)]
    return rng.permuted(out.reshape(n_batches, batch_size), axis=1).reshape(-1)


class BatchLoader:
    """Iterates over ``positions`` (rows of ``data``) in batches.

    ``order``: ``sequential`` (evaluation), ``shuffle`` or ``balanced`` (needs ``strata``, one
    key per position; :func:`balanced_order`: ``epoch_size // batch_size`` full batches).
    Each ``iter()`` is a new epoch with its own seeded permutation, so two
    loaders built with the same seed yield the same batches.
    """

    def __init__(
        self,
        data: DeviceData,
        positions: np.ndarray,
        *,
        batch_size: int,
        attribute: str | None,
        order: Order = "sequential",
        strata: np.ndarray | None = None,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        channels_last: bool = False,
        epoch_size: int | None = None,
    ) -> None:
        if order == "balanced" and (strata is None or len(strata) != len(positions)):
            raise ValueError("balanced order needs one stratum key per position")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.data = data
        self.positions = np.asarray(positions, dtype=np.int64)
        self.batch_size = batch_size
        self.attribute = attribute
        self.order = order
        self.strata = strata
        self.drop_last = drop_last
        self.augment = augment
        self.seed = seed
        self.channels_last = channels_last
        self.epoch_size = epoch_size or len(self.positions)
        self.epoch = 0
        self._aug_gen: torch.Generator | None = None

    def __len__(self) -> int:
        n = self.epoch_size
        if self.order == "balanced":
            return max(1, n // self.batch_size)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _epoch_positions(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        n = len(self.positions)
        if self.order == "sequential":
            idx = np.arange(n)
        elif self.order == "shuffle":
            idx = rng.permutation(n)
        else:
            assert self.strata is not None
            n_batches, bs = len(self), self.batch_size
            idx = balanced_order(self.strata, bs, n_batches, rng)
            return [self.positions[idx[i * bs:(i + 1) * bs]] for i in range(n_batches)]
        bs = self.batch_size
        chunks = [idx[i:i + bs] for i in range(0, len(idx), bs)]
        if self.drop_last and chunks and len(chunks[-1]) < bs:
            chunks = chunks[:-1]
        return [self.positions[c] for c in chunks]

    def __iter__(self) -> Iterator[Batch]:
        batches = self._epoch_positions()
        self.epoch += 1
        dev = self.data.device
        if self.augment is not None and self._aug_gen is None:
            self._aug_gen = torch.Generator(device=dev)
            self._aug_gen.manual_seed(int(self.seed) * 1_000_003 + 17)
        if self.data.on_device:
            for pos in batches:
                index = torch.from_numpy(pos).to(dev, non_blocking=True)
                u8 = self.data.images[index]
                mask = self.data.masks[index] if self.data.masks is not None else None
                yield self._make_batch(index, u8, mask)
            return
        # host-resident data: the next batch is gathered and its copy started before this
        # one is handed to the model, so the copy overlaps the model's work (CUDA)
        staged = self.data.stage(batches[0]) if batches else None
        for i, pos in enumerate(batches):
            assert staged is not None
            current = staged
            staged = self.data.stage(batches[i + 1]) if i + 1 < len(batches) else None
            u8, mask = current.ready()
            yield self._make_batch(torch.from_numpy(pos).to(dev, non_blocking=True), u8, mask)

    def _make_batch(self, index: torch.Tensor, u8: torch.Tensor,
                    mask: torch.Tensor | None) -> Batch:
        data = self.data
        if self.augment is not None:
            u8, mask = self._augment(u8, mask)
        x = u8.permute(0, 3, 1, 2).float()  # NHWC storage: channels-last strides for free
        x = (x - data.mean) / data.std
        if not self.channels_last:
            x = x.contiguous()
        attrs = {k: v[index] for k, v in data.attrs.items()}
        g = attrs.get(self.attribute) if self.attribute else None
        return Batch(x=x, y=data.labels[index], g=g, index=index, mask=mask, attrs=attrs)

    def _augment(self, u8: torch.Tensor, mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        aug = self.augment
        assert aug is not None and self._aug_gen is not None
        b, h, w, _ = u8.shape
        dev = u8.device
        gen = self._aug_gen
        s = aug.max_shift
        dy = torch.randint(-s, s + 1, (b, 1), device=dev, generator=gen)
        dx = torch.randint(-s, s + 1, (b, 1), device=dev, generator=gen)
        rows = (torch.arange(h, device=dev).unsqueeze(0) + dy).clamp_(0, h - 1)
        cols = (torch.arange(w, device=dev).unsqueeze(0) + dx).clamp_(0, w - 1)
        if aug.vflip:
            flip = torch.rand((b, 1), device=dev, generator=gen) < 0.5
            rows = torch.where(flip, h - 1 - rows, rows)
        if aug.hflip:
            flip = torch.rand((b, 1), device=dev, generator=gen) < 0.5
            cols = torch.where(flip, w - 1 - cols, cols)
        bi = torch.arange(b, device=dev).view(b, 1, 1)
        r, c = rows.unsqueeze(2), cols.unsqueeze(1)
        out = u8[bi, r, c]
        out_mask = mask[bi, r, c] if mask is not None else None
        return out, out_mask
