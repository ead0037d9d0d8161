"""A backbone's final feature map, captured during a normal forward pass
(:class:`FeatureTap`): what MFD aligns between teacher and student and what the run's leakage
probe reads for a method that acts on it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FeatureTap:
    """Captures a backbone's final feature map (the output of its last convolutional stage)
    during a normal forward pass, so one pass gives the logits and the map.

    The map is the input of the body's last ``AdaptiveAvgPool2d``/``AdaptiveMaxPool2d`` (its
    global pooling: smallcnn, timm and torchvision ResNets); a body without one (the VGGs)
    has its last ``MaxPool2d`` tapped instead, the end of its convolutional features, so the
    map is the 512×s×s output of VGG's features and never the 4096-d vector of the
    pre-logits layers that follow (timm's VGG computes those with convolutions, the
    torchvision one with linear layers). ``found`` is False for a body with neither: the
    caller then uses the pooled features. Call :meth:`remove` when training ends.
    """

    def __init__(self, model: nn.Module) -> None:
        body = getattr(model, "body", model)
        pools = [m for m in body.modules()
                 if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
        maxpools = [m for m in body.modules() if isinstance(m, nn.MaxPool2d)]
        self.found = bool(pools or maxpools)
        self.value: torch.Tensor | None = None
        self._handle = None
        if pools:  # the map entering the global pooling
            self._handle = pools[-1].register_forward_pre_hook(self._pre_hook)
        elif maxpools:  # the map leaving the last pooling of the convolutional features
            self._handle = maxpools[-1].register_forward_hook(self._hook)

    def _pre_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.value = inputs[0]

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        self.value = output

    def take(self) -> torch.Tensor:
        assert self.value is not None, "the feature tap saw no forward pass"
        value, self.value = self.value, None
        return value.flatten(1)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
