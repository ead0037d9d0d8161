"""Segmentors by name: U-Nets from segmentation-models-pytorch with timm encoders, never
downloaded.

Every segmentor is a :class:`Segmentor`: ``encode(x)`` gives the encoder's feature maps (the
skips, shallow to deep; the last one is the bottleneck), ``decode(features)`` the mask
logits, and ``forward(x) = decode(encode(x))``, so a latent method (APPLE) can sit between
them. The output has one channel for a binary mask (sigmoid; code 1 = the structure) and one
channel per mask class otherwise (softmax; code 0 = background).

Names: ``unet:<encoder>`` with any segmentation-models-pytorch encoder name, e.g.
``unet:tu-resnet10t`` (a timm encoder through smp's universal wrapper: the default, fast on a
CPU) or ``unet:tu-resnet18`` / ``unet:resnet34``. Weights are random (``encoder_weights`` is
always None); ``weights=PATH`` loads a local state dict: a whole fairbench segmentor, or a
timm model's checkpoint for a ``tu-`` encoder.

Parameters (``--backbone-param key=value``): ``encoder_depth`` (default 4: the image size
must be a multiple of 2^depth) and ``decoder_width`` (default 64: the decoder's channels
halve per stage from it, never below 8).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairbench.core.errors import FairbenchError, ParamError, UnknownNameError
from fairbench.models.backbones import WeightsMatch, check_coverage, match_state, read_state_dict

log = logging.getLogger(__name__)

PREFIX = "unet:"
DEFAULT_SEGMENTOR = "unet:tu-resnet10t"


def is_segmentor_name(name: str) -> bool:
    return name.startswith(PREFIX)


class Segmentor(nn.Module):
    """A U-Net split into ``encode`` and ``decode`` (see the module docstring)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module,
                 n_mask_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = head
        self.n_mask_classes = n_mask_classes
        params = list(inspect.signature(decoder.forward).parameters.values())
        # smp >= 0.6 takes the feature list, older versions the features as arguments
        self._decoder_takes_list = not any(p.kind is p.VAR_POSITIONAL for p in params)

    @property
    def out_channels(self) -> int:
        return 1 if self.n_mask_classes == 2 else self.n_mask_classes

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, shallow to deep (the last is the bottleneck)."""
        return list(self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Mask logits (B × out_channels × H × W) from :meth:`encode`'s features."""
        out = self.decoder(features) if self._decoder_takes_list else self.decoder(*features)
        return self.segmentation_head(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def match_weights(self, state: Mapping[str, torch.Tensor]
                      ) -> tuple[tuple[nn.Module, dict[str, torch.Tensor]], WeightsMatch]:
        """Where a state dict goes: the whole segmentor (its head, sized by the run's mask
        classes, not counted), else a timm model's checkpoint into a ``tu-`` encoder's inner
        model, else smp's encoder state dict into the encoder; the first part any tensor of
        ``state`` fits, with what it covers of that part."""
        own = self.state_dict()
        candidates: list[tuple[nn.Module, str, tuple[str, ...]]] = [
            (self, "", ("segmentation_head.",))]
        inner = getattr(self.encoder, "model", None)
        if isinstance(inner, nn.Module):
            candidates.append((inner, "encoder.model.", ()))
        candidates.append((self.encoder, "encoder.", ()))
        for target, prefix, uncounted in candidates:
            usable, match = match_state(own, state, prefix, uncounted=uncounted)
            if usable:
                return (target, usable), match
        return (self, {}), match


def _encoder_name(name: str) -> str:
    return name[len(PREFIX):]


def check_segmentor_name(name: str) -> None:
    """Raise :class:`UnknownNameError` unless ``name`` is ``unet:<encoder>`` of a known
    encoder (cheap: nothing is built)."""
    if not is_segmentor_name(name):
        raise UnknownNameError(
            f"{name!r} is not a segmentor; segmentation needs a U-Net such as {DEFAULT_SEGMENTOR}")
    encoder = _encoder_name(name)
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            raise UnknownNameError(
                f"unknown timm encoder {encoder[3:]!r} in {name!r}; see timm.list_models()")
        return
    from segmentation_models_pytorch.encoders import get_encoder_names

    names = get_encoder_names()
    if encoder not in names:
        import difflib

        close = difflib.get_close_matches(encoder, names, n=3)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown segmentation encoder {encoder!r}{hint} (or use "
                               f"{PREFIX}tu-<timm model>)")


def check_segmentor_size(image_size: int, encoder_depth: int = 4) -> None:
    step = 2 ** encoder_depth
    if image_size % step:
        raise FairbenchError(
            f"--image-size {image_size} does not suit a U-Net of encoder depth {encoder_depth}: "
            f"use a multiple of {step} (e.g. {max(step, image_size // step * step)}), or "
            "--backbone-param encoder_depth=<smaller>")


def create_segmentor(
    name: str,
    *,
    n_mask_classes: int,
    image_size: int,
    weights: str | Path | None = None,
    allow_partial_weights: bool = False,
    encoder_depth: int = 4,
    decoder_width: int = 64,
    **params: Any,
) -> Segmentor:
    """Build segmentor ``name`` (random weights), then load local ``weights`` if given
    (:func:`load_segmentor_weights`; ``allow_partial_weights`` lifts its coverage threshold)."""
    import segmentation_models_pytorch as smp

    check_segmentor_name(name)
    if not 1 <= int(encoder_depth) <= 5:
        raise ParamError(f"backbone encoder_depth={encoder_depth} must lie in 1..5")
    if int(decoder_width) < 8:
        raise ParamError(f"backbone decoder_width={decoder_width} must be at least 8")
    check_segmentor_size(image_size, int(encoder_depth))
    if n_mask_classes < 2:
        raise FairbenchError("a segmentor needs at least 2 mask classes (background and one)")
    channels = [max(8, int(decoder_width) >> i) for i in range(int(encoder_depth))]
    out = 1 if n_mask_classes == 2 else n_mask_classes
    try:
        net = smp.Unet(encoder_name=_encoder_name(name), encoder_weights=None,
                       encoder_depth=int(encoder_depth), decoder_channels=channels,
                       classes=out, **params)
    except TypeError as exc:
        raise ParamError(f"bad parameters for segmentor {name!r}: {exc}") from None
    model = Segmentor(net.encoder, net.decoder, net.segmentation_head, n_mask_classes)
    if weights:
        load_segmentor_weights(model, weights, name=name, allow_partial=allow_partial_weights)
    return model


def load_segmentor_weights(model: Segmentor, path: str | Path, *, name: str = "unet",
                           allow_partial: bool = False) -> WeightsMatch:
    """Load a local state dict: a whole fairbench segmentor, or an encoder-only checkpoint
    (a timm model's state dict for a ``tu-`` encoder, or smp's encoder state dict). What did
    not load is reported (a warning naming the parts left at random values); a file that
    supplies less than :data:`~fairbench.models.backbones.MIN_WEIGHTS_COVERAGE` of the part it
    fits (the whole U-Net but its head, or the encoder) is refused unless ``allow_partial``."""
    file = Path(path).expanduser()
    (target, usable), match = model.match_weights(read_state_dict(file))
    check_coverage(file, name, match, allow_partial, what="segmentor")
    if match.missing or match.unused:
        log.warning("weights file %s: %s", file, match.describe())
    target.load_state_dict(usable, strict=False)
    return match
