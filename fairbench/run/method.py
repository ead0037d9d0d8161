"""The method contract and its registry.

A method is a class registered by name, with a typed hyperparameter dataclass ``Params``
(defaults from its paper, ranges declared with :func:`fairbench.param`) and one entry point,
``run(ctx, params) -> nn.Module``. In-training methods call ``ctx.fit`` (the shared trainer)
with their own hooks; post-hoc methods start from ``ctx.vanilla()``. The returned module maps
images to logits; a method that needs the sensitive attribute at inference sets
``needs_attribute_at_inference = True`` and its module takes ``(x, g)``. ``engagement(notes)``
says what shows that the mechanism acted in a run (:mod:`fairbench.run.engagement`), read off
the notes ``run`` left in ``ctx.notes``. A plugin imports only from the top-level
``fairbench`` API::

    from dataclasses import dataclass

    import torch.nn.functional as F

    from fairbench import Engagement, Method, TrainHooks, param, register_method

    @dataclass
    class MyParams:
        smoothing: float = param(0.1, min=0.0, max=1.0, help="label smoothing")

    @register_method("mymethod")
    class MyMethod(Method):
        '''One line that says what it does.'''
        Params = MyParams
        kind = "in-training"

        def run(self, ctx, params):
            def loss(model, batch, state):
                return F.cross_entropy(model(batch.x), batch.y,
                                       label_smoothing=params.smoothing)

            model = ctx.new_model()
            ctx.fit(model, hooks=TrainHooks(loss=loss))
            ctx.notes["mymethod"] = {"smoothing": params.smoothing}
            return model

        def engagement(self, notes):
            eps = notes["mymethod"]["smoothing"]
            return Engagement(eps > 0, "smoothed targets (smoothing > 0)", {"smoothing": eps})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import nn

from fairbench.core.params import NoParams, build_params, describe_params
from fairbench.core.registry import Registry
from fairbench.run.engagement import Engagement

if TYPE_CHECKING:
    from fairbench.run.context import RunContext


class Method:
    """Base class of mitigation methods (see the module docstring)."""

    Params: ClassVar[type] = NoParams
    kind: ClassVar[Literal["baseline", "in-training", "post-hoc"]] = "in-training"
    needs_attribute_at_inference: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    registered_name: ClassVar[str] = ""

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        if params is None or isinstance(params, dict):
            raw = dict(params or {})
            raw.update(kwargs)
            params = build_params(self.Params, raw, owner=f"method {self.name}")
        self.params = params

    @property
    def name(self) -> str:
        return self.registered_name or type(self).__name__.lower()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        return describe_params(cls.Params)

    def run(self, ctx: RunContext, params: Any) -> nn.Module:
        raise NotImplementedError

    def engagement(self, notes: Mapping[str, Any]) -> Engagement | None:
        """Whether the mechanism acted in this run, read off the notes ``run`` left
        (:mod:`fairbench.run.engagement`); ``None``: not declared (the conformance kit asks
        every method to declare it; a method without a mechanism returns ``NO_MECHANISM``)."""
        return None


METHODS: Registry[type[Method]] = Registry("method", "fairbench.methods", builtins="fairbench.methods")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a :class:`Method` subclass under ``name``."""
    return METHODS.register(name)



def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching ``pattern`` (e.g. ``"fair*"``)."""
    return METHODS.list(pattern)


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def create_method(name: str, **params: Any) -> Method:
    """``create_method("vanilla")`` → a configured method instance (parameters checked)."""
    return get_method_class(name)(params)
