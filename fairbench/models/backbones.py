"""Backbones by name: timm and torchvision models behind one interface, never downloaded.

Every backbone is a :class:`Classifier`: ``features(x)`` gives the pooled embedding (B×D),
``head(z)`` the logits, and ``forward(x) = head(features(x))``. Models are built with random
weights; ``weights=PATH`` loads a local state dict (``weights_only=True``).

Names: ``smallcnn`` (a 4-block CNN for CPU runs), ``resnet18`` (timm), ``vgg11``
(torchvision, with the FairQuantize adaptation for small inputs), ``tv_resnet18``,
``timm_vgg11``, and any timm model as ``timm:<name>`` or torchvision model as ``tv:<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairbench.core.errors import FairbenchError, ParamError, UnknownNameError
from fairbench.core.registry import Registry


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
    **params: Any,
) -> Classifier:
    """Build backbone ``name`` with random weights, then load local ``weights`` if given."""
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
        load_weights(model, weights)
    return model


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
    if not file.is_file():
        raise FairbenchError(f"weights file {str(file)!r} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FairbenchError(f"weights file {str(file)!r} could not be read ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FairbenchError(f"weights file {str(file)!r} does not hold a state dict")
    return state


def load_weights(model: Classifier, path: str | Path) -> None:
    """Load a local state dict: a whole fairbench model, or a body-only (timm/torchvision)
    checkpoint whose classifier keys do not match; reports what did not load."""
    file = Path(path).expanduser()
    state = read_state_dict(file)
    own = model.state_dict()
    if set(state) <= set(own):
        target, prefix = model, ""
    else:
        target, prefix = model.body, "body."
    own_target = {k[len(prefix):]: v for k, v in own.items() if k.startswith(prefix)}
    usable = {k: v for k, v in state.items() if k in own_target and own_target[k].shape == v.shape}
    if not usable:
        raise FairbenchError(
            f"weights file {str(file)!r} matches no parameter of this backbone; "
            "check that it was saved from the same architecture"
        )
    target.load_state_dict(usable, strict=False)


# -- small CNN ---------------------------------------------------------------------------------
@register_backbone("smallcnn")
def smallcnn(num_classes: int, image_size: int, width: int = 32, **_: Any) -> Classifier:
    """Four conv-BN-ReLU-maxpool blocks (width, 2w, 4w, 8w channels), global average pool.

    Small enough for CPU runs on ``synthderm``; built only from layers BackPACK supports.
    """

    if image_size < 16:  # four 2x2 max-pools: a smaller input pools to nothing
        raise ParamError(f"backbone 'smallcnn' needs --image-size 16 or more (got {image_size})")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(), nn.MaxPool2d(2)]

    w = width
    body = nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 4 * w),
                         *block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, 8 * w, num_classes)


# -- timm ----------------------------------------------------------------------------------------
def _timm_classifier(name: str, num_classes: int, **params: Any) -> Classifier:
    import timm

    if not timm.is_model(name):
        raise UnknownNameError(f"unknown timm model {name!r}; see timm.list_models()")
    params.pop("image_size", None)
    body = timm.create_model(name, pretrained=False, num_classes=0, **params)
    return Classifier(body, int(body.num_features), num_classes)


@register_backbone("resnet18")
def resnet18(num_classes: int, image_size: int, **params: Any) -> Classifier:
    """timm's ResNet-18 (random init)."""
    return _timm_classifier("resnet18", num_classes, **params)


@register_backbone("timm_vgg11")
def timm_vgg11(num_classes: int, image_size: int, **params: Any) -> Classifier:
    """timm's VGG-11 (random init), its pre-logits made a fixed chain for the input size.

    timm's ConvMlp pools small maps up to 7×7 before a 7×7 convolution (a data-dependent
    branch that torch.fx and BackPACK reject); as FairQuantize does for torchvision's VGG, the
    first pre-logits convolution takes the s×s map of an ``image_size`` input directly
    (s = image_size // 32), which is the same function class without the up-sampling.
    """
    import timm

    model = timm.create_model("vgg11", pretrained=False, num_classes=0, **params)
    s = max(1, image_size // 32)
    mlp = model.pre_logits
    body = nn.Sequential(
        model.features,
        nn.Conv2d(mlp.fc1.in_channels, mlp.fc1.out_channels, kernel_size=s),
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
