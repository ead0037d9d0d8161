"""Backbones by name: timm and torchvision models behind one interface, never downloaded.

Every backbone is a :class:`Classifier`: ``features(x)`` gives the pooled embedding (B×D),
``head(z)`` the logits, and ``forward(x) = head(features(x))``. Models are built with random
weights; ``weights=PATH`` loads a local state dict (``weights_only=True``).

Names: ``smallcnn`` (a 4-block CNN for CPU runs), ``resnet18`` (timm), ``vgg11``
(torchvision, with the FairQuantize adaptation for small inputs), ``tv_resnet18``,
``timm_vgg11``, and any timm model as ``timm:<name>`` or torchvision model as ``tv:<name>``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairbench.core.errors import FairbenchError, ParamError, UnknownNameError
from fairbench.core.params import coerce_value
from fairbench.core.registry import Registry

log = logging.getLogger("fairbench")

#: a --weights file must supply at least this fraction of the backbone's values (its body,
#: the classifier head excluded) unless the run allows partial weights
MIN_WEIGHTS_COVERAGE = 0.9


class Classifier(nn.Module):
    """``body`` maps images to a B×D embedding; ``classifier`` maps it to logits.

    Kept as a plain two-module chain so that BackPACK and torch.fx can walk it.
    """

    def __init__(self, body: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.classifier = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


BackboneFactory = Callable[..., Classifier]
BACKBONES: Registry[BackboneFactory] = Registry("backbone", "fairbench.backbones")


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(num_classes, image_size, **params) -> Classifier``."""
    return BACKBONES.register(name)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.list(pattern)


def create_backbone(
    name: str,
    *,
    num_classes: int,
    image_size: int,
    weights: str | Path | None = None,
    allow_partial_weights: bool = False,
    pretrained: str | Path | None = None,
    **params: Any,
) -> Classifier:
    """Build backbone ``name`` with random weights, or from the local ImageNet-pretrained
    weights file ``pretrained`` of its timm model (:mod:`fairbench.models.pretrained`; the
    head is new, sized to ``num_classes``), then load local ``weights`` if given (see
    :func:`load_weights`; ``allow_partial_weights`` lifts its coverage threshold)."""
    if pretrained is not None:
        from fairbench.models.pretrained import timm_name

        if timm_name(name) is None:
            raise FairbenchError(f"backbone {name!r} has no pretrained weights in fairbench; "
                                 "use resnet18, timm_vgg11 or timm:<name>")
        params = {**params, "pretrained": pretrained}
    if name.startswith("timm:"):
        model = _timm_classifier(name[5:], num_classes, **params)
    elif name.startswith("tv:"):
        model = _torchvision_classifier(name[3:], num_classes, image_size, **params)
    else:
        factory = BACKBONES.get(name)
        try:
            model = factory(num_classes=num_classes, image_size=image_size, **params)
        except TypeError as exc:
            raise ParamError(f"bad parameters for backbone {name!r}: {exc}") from None
    if weights:
        load_weights(model, weights, allow_partial=allow_partial_weights, name=name)
    return model


_NONE = {"none", "null"}


def _literal(raw: Any) -> Any:
    """A backbone option given as a string, typed as what it reads as: an int, a float, a
    boolean, none, or else the string itself (for options that no signature declares)."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text.lower() in _NONE:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def declared_params(name: str) -> tuple[dict[str, Any], bool] | None:
    """``({option: annotation}, takes_more)`` of a registered backbone factory (``takes_more``:
    it passes further options on to timm or torchvision); ``None`` for other names."""
    if name.startswith(("timm:", "tv:")) or name not in BACKBONES:
        return None
    factory = BACKBONES.get(name)
    try:
        sig = inspect.signature(factory)
        hints = {k: v for k, v in getattr(factory, "__annotations__", {}).items()}
    except (TypeError, ValueError):
        return None
    declared: dict[str, Any] = {}
    more = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            more = True
        elif p.name not in ("num_classes", "image_size", "pretrained") \
                and p.kind is not p.VAR_POSITIONAL:
            ann = hints.get(p.name, p.annotation)
            declared[p.name] = _annotation(ann)
    return declared, more


def _annotation(ann: Any) -> Any:
    """A string annotation (``from __future__ import annotations``) as its type, where simple."""
    if isinstance(ann, str):
        return {"int": int, "float": float, "bool": bool, "str": str}.get(ann, Any)
    return ann if ann is not inspect.Parameter.empty else Any


def type_backbone_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` typed like method parameters: by the factory's annotations where it declares
    them (``width=16`` → 16), else by what each value reads as; an option that the factory
    does not take is refused here when the factory declares all of its options."""
    declared = declared_params(name)
    out: dict[str, Any] = {}
    for key, raw in params.items():
        key = str(key).replace("-", "_")
        if declared is not None and key in declared[0] and declared[0][key] in (int, float, bool,
                                                                                  str):
            out[key] = coerce_value(key, raw, declared[0][key])
        else:
            out[key] = _literal(raw)
        if declared is not None and key not in declared[0] and not declared[1]:
            import difflib

            valid = sorted(declared[0])
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]}?" if close else (
                f"valid: {', '.join(valid)}" if valid else "it takes no options")
            raise UnknownNameError(f"unknown --backbone-param {key!r} for backbone {name!r}; "
                                   f"{hint}")
    return out


def check_backbone_params(name: str, params: Mapping[str, Any], *, image_size: int,
                          n_outputs: int = 3, weights: str | Path | None = None,
                          allow_partial: bool = False,
                          build: Callable[..., nn.Module] | None = None) -> dict[str, Any]:
    """The backbone options of a run, typed (:func:`type_backbone_params`) and checked by
    building the model on the ``meta`` device (no memory, no time): an option the model does
    not take is one clear error before any work; so is a ``weights`` file that covers less than
    :data:`MIN_WEIGHTS_COVERAGE` of the backbone, unless ``allow_partial``. ``build(**typed)``
    replaces the classifier factory (segmentors)."""
    typed = type_backbone_params(name, params)
    try:
        with torch.device("meta"):
            if build is not None:
                model: nn.Module = build(**typed)
            else:
                model = create_backbone(name, num_classes=n_outputs, image_size=image_size,
                                        **typed)
    except TypeError as exc:
        raise ParamError(f"bad --backbone-param for backbone {name!r}: {exc}") from None
    except FairbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot be built on "meta"
        log.debug("could not check backbone %s on the meta device: %s", name, exc)
        return typed
    if weights:
        state = read_state_dict(Path(weights).expanduser())
        if isinstance(model, Classifier):
            check_coverage(Path(weights), name, match_weights(model, state)[1], allow_partial)
        elif callable(getattr(model, "match_weights", None)):  # a segmentor
            check_coverage(Path(weights), name, model.match_weights(state)[1], allow_partial,
                           what="segmentor")
    return typed


def check_backbone_name(name: str) -> None:
    """Raise :class:`UnknownNameError` (with close matches) unless ``name`` can be built:
    a registered name, ``timm:<model>`` of a timm model or ``tv:<model>`` of a torchvision one.
    Cheap: nothing is built, so a run can check it before any work."""
    if name.startswith("timm:"):
        import timm

        if not timm.is_model(name[5:]):
            raise UnknownNameError(f"unknown timm model {name[5:]!r}; see timm.list_models()")
    elif name.startswith("tv:"):
        import torchvision

        try:
            torchvision.models.get_model_builder(name[3:])
        except ValueError:
            raise UnknownNameError(f"unknown torchvision model {name[3:]!r}") from None
    else:
        BACKBONES.get(name)


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``file`` (``torch.load(weights_only=True)``; a ``{"state_dict": ..}``
    wrapper is unpacked); one clear error when it is missing or unreadable."""
    if file.is_dir():
        raise FairbenchError(f"weights file {str(file)!r} is a folder; give the .pt file")
    if not file.is_file():
        raise FairbenchError(f"weights file {str(file)!r} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own message runs over many lines
        raise FairbenchError(f"weights file {str(file)!r} is not a torch state dict "
                             f"(torch.load: {type(exc).__name__}); give a file saved with "
                             "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FairbenchError(f"weights file {str(file)!r} does not hold a state dict")
    return state


@dataclass
class WeightsMatch:
    """What a state dict supplies to a backbone: tensors loaded, tensors of the backbone left
    at their random values (``missing``), tensors of the file not used (unknown names or other
    shapes), and the fraction of the backbone's body values it supplies."""

    loaded: list[str]
    missing: list[str]
    unused: list[str]
    loaded_values: int
    total_values: int

    @property
    def coverage(self) -> float:
        return self.loaded_values / self.total_values if self.total_values else 1.0

    def describe(self) -> str:
        text = (f"loaded {len(self.loaded)} of {len(self.loaded) + len(self.missing)} tensors "
                f"({self.coverage:.0%} of the model's values)")
        if self.missing:
            text += f"; not loaded: {_grouped(self.missing)}"
        if self.unused:
            text += f"; unused from the file: {_grouped(self.unused)}"
        return text


def _grouped(keys: list[str], limit: int = 4) -> str:
    """``layer4 (17 tensors), fc (2 tensors)``: keys grouped by their first component(s)."""
    groups: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:2] if parts[0] in ("body", "model") and len(parts) > 2 else
                        parts[:1])
        groups[head] = groups.get(head, 0) + 1
    items = [f"{g} ({n} tensor{'s' if n > 1 else ''})" for g, n in groups.items()]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit
                                       else "")


def match_weights(model: Classifier, state: Mapping[str, torch.Tensor]
                  ) -> tuple[tuple[nn.Module, dict[str, torch.Tensor]], WeightsMatch]:
    """Where ``state`` goes in ``model`` (the whole model, or its body for a body-only timm or
    torchvision checkpoint) and what it covers; the classifier head is not counted."""
    own = model.state_dict()
    if set(state) <= set(own):
        target, prefix = model, ""
    else:
        target, prefix = model.body, "body."
    usable, match = match_state(own, state, prefix,
                                uncounted=("classifier.",) if prefix == "" else ())
    return (target, usable), match


def match_state(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                prefix: str = "", *, uncounted: tuple[str, ...] = ()
                ) -> tuple[dict[str, torch.Tensor], WeightsMatch]:
    """The tensors of ``state`` that fit the part of a model's state dict ``own`` under
    ``prefix`` (same name after the prefix, same shape), and what they cover: every tensor of
    that part counts except BatchNorm's step counters and names starting with one of
    ``uncounted`` (a task head whose size depends on the run)."""
    own_target = {k[len(prefix):]: v for k, v in own.items() if k.startswith(prefix)}
    usable = {k: v for k, v in state.items() if k in own_target and own_target[k].shape == v.shape}
    counted = {k: v for k, v in own_target.items()
               if not k.startswith(uncounted) and not k.endswith("num_batches_tracked")}
    loaded = [k for k in counted if k in usable]
    missing = [k for k in counted if k not in usable]
    unused = [k for k in state if k not in usable]
    match = WeightsMatch(loaded, missing, unused,
                         sum(counted[k].numel() for k in loaded),
                         sum(v.numel() for v in counted.values()))
    return usable, match


def check_coverage(file: Path, name: str, match: WeightsMatch, allow_partial: bool, *,
                   what: str = "backbone") -> None:
    """One clear error when ``match`` loads nothing, or less than
    :data:`MIN_WEIGHTS_COVERAGE` of the model's values unless ``allow_partial``."""
    if not match.loaded:
        raise FairbenchError(
            f"weights file {str(file)!r} matches no parameter of {what} {name!r}; "
            "check that it was saved from the same architecture")
    if match.coverage < MIN_WEIGHTS_COVERAGE and not allow_partial:
        raise FairbenchError(
            f"weights file {str(file)!r} covers only {match.coverage:.0%} of {what} "
            f"{name!r} ({match.describe()}); use a checkpoint of the same architecture, or "
            f"--allow-partial-weights to load it anyway")


def load_weights(model: Classifier, path: str | Path, *, allow_partial: bool = False,
                 name: str | None = None) -> WeightsMatch:
    """Load a local state dict: a whole fairbench model, or a body-only (timm/torchvision)
    checkpoint whose classifier keys do not match. What did not load is reported (a warning
    naming the stages left at random values); a file that supplies less than
    :data:`MIN_WEIGHTS_COVERAGE` of the backbone's values is refused unless
    ``allow_partial``."""
    file = Path(path).expanduser()
    state = read_state_dict(file)
    (target, usable), match = match_weights(model, state)
    check_coverage(file, name or type(model).__name__, match, allow_partial)
    if match.missing or match.unused:
        log.warning("weights file %s: %s", file, match.describe())
    target.load_state_dict(usable, strict=False)
    return match


# -- small CNN ---------------------------------------------------------------------------------
@register_backbone("smallcnn")
def smallcnn(num_classes: int, image_size: int, width: int = 32) -> Classifier:
    """Four conv-BN-ReLU-maxpool blocks (width, 2w, 4w, 8w channels), global average pool.

    Small enough for CPU runs on ``synthderm``; built only from layers BackPACK supports.
    """

    if image_size < 16:  # four 2x2 max-pools: a smaller input pools to nothing
        raise ParamError(f"backbone 'smallcnn' needs --image-size 16 or more (got {image_size})")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(), nn.MaxPool2d(2)]

    if width < 1:
        raise ParamError(f"backbone 'smallcnn' width={width} must be at least 1")
    w = width
    body = nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 4 * w),
                         *block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, 8 * w, num_classes)


# -- timm ----------------------------------------------------------------------------------------
def _timm_body(name: str, pretrained: str | Path | None, **params: Any) -> nn.Module:
    """timm model ``name`` without its classifier: random, or from the ``pretrained`` file."""
    import timm

    if pretrained is not None:
        from fairbench.models.pretrained import pretrained_body

        return pretrained_body(name, pretrained, **params)
    return timm.create_model(name, pretrained=False, num_classes=0, **params)


def _timm_classifier(name: str, num_classes: int, pretrained: str | Path | None = None,
                     **params: Any) -> Classifier:
    import timm

    if not timm.is_model(name):
        raise UnknownNameError(f"unknown timm model {name!r}; see timm.list_models()")
    params.pop("image_size", None)
    body = _timm_body(name, pretrained, **params)
    # the embedding the head sees: models with a pre-logits block (timm's VGG: 4096 after a
    # 512-channel trunk) say so in head_hidden_size, the others in num_features
    width = getattr(body, "head_hidden_size", None) or body.num_features
    return Classifier(body, int(width), num_classes)


@register_backbone("resnet18")
def resnet18(num_classes: int, image_size: int, **params: Any) -> Classifier:
    """timm's ResNet-18 (random init, or ImageNet-pretrained with ``pretrained=FILE``)."""
    return _timm_classifier("resnet18", num_classes, **params)


@register_backbone("timm_vgg11")
def timm_vgg11(num_classes: int, image_size: int, **params: Any) -> Classifier:
    """timm's VGG-11 (random init), its pre-logits made a fixed chain for the input size.

    timm's ConvMlp pools small maps up to 7×7 before a 7×7 convolution (a data-dependent
    branch that torch.fx and BackPACK reject); as FairQuantize does for torchvision's VGG, the
    first pre-logits convolution takes the s×s map of an ``image_size`` input directly
    (s = image_size // 32), which is the same function class without the up-sampling.
    """
    pretrained = params.pop("pretrained", None)
    model = _timm_body("vgg11", pretrained, **params)
    s = max(1, image_size // 32)
    mlp = model.pre_logits
    first = nn.Conv2d(mlp.fc1.in_channels, mlp.fc1.out_channels, kernel_size=s)
    if pretrained is not None:
        if tuple(mlp.fc1.weight.shape[2:]) == (s, s):  # 224 px: the pretrained 7x7 fits
            with torch.no_grad():
                first.weight.copy_(mlp.fc1.weight)
                first.bias.copy_(mlp.fc1.bias)
        else:
            log.warning("timm_vgg11 at %d px: the first pre-logits convolution (%dx%d) has "
                        "no pretrained counterpart (7x7 at 224 px) and starts random",
                        image_size, s, s)
    body = nn.Sequential(
        model.features,
        first,
        nn.ReLU(),
        nn.Dropout(mlp.drop.p),
        mlp.fc2,
        nn.ReLU(),
        nn.Flatten(),
    )
    return Classifier(body, mlp.fc2.out_channels, num_classes)


# -- torchvision ---------------------------------------------------------------------------------
def _torchvision_classifier(name: str, num_classes: int, image_size: int,
                            **params: Any) -> Classifier:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise UnknownNameError(f"unknown torchvision model {name!r}") from None
    model = builder(weights=None, **params)
    if name.startswith("vgg"):
        return _vgg_classifier(model, image_size, num_classes)
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        num_features = model.fc.in_features
        model.fc = nn.Identity()
        return Classifier(model, num_features, num_classes)
    raise ParamError(
        f"torchvision model {name!r} is not supported yet (only ResNet-like and VGG-like); "
        "use timm:<name> instead"
    )


def _vgg_classifier(model: nn.Module, image_size: int, num_classes: int) -> Classifier:
    """torchvision VGG as FairQuantize adapts it: the AdaptiveAvgPool2d(7) is dropped
    (it would up-sample small maps, which BackPACK rejects) and the first linear layer takes
    the 512·s·s features of an ``image_size`` input (s = image_size // 32)."""
    s = max(1, image_size // 32)
    hidden = model.classifier[0].out_features
    body = nn.Sequential(
        model.features,
        nn.Flatten(),
        nn.Linear(512 * s * s, hidden),
        *list(model.classifier.children())[1:-1],  # ReLU, Dropout, Linear, ReLU, Dropout
    )
    return Classifier(body, model.classifier[-1].in_features, num_classes)


@register_backbone("vgg11")
def vgg11(num_classes: int, image_size: int, **params: Any) -> Classifier:
    """torchvision's VGG-11 without BN (as the FairQuantize code), adapted to the input size."""
    return _torchvision_classifier("vgg11", num_classes, image_size, **params)


@register_backbone("tv_resnet18")
def tv_resnet18(num_classes: int, image_size: int, **params: Any) -> Classifier:
    """torchvision's ResNet-18 (random init)."""
    return _torchvision_classifier("resnet18", num_classes, image_size, **params)
