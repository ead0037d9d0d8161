"""``fairbench.testing.check_method``: passes for a conforming method, fails (naming the check)
for broken ones."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fairbench import NO_MECHANISM, Method, check_method
from fairbench.run.method import METHODS


@pytest.fixture
def registry_guard(fresh_registries):
    yield
    for name in ("broken_random", "broken_peeks", "broken_shape", "ok_untrained"):
        METHODS._entries.pop(name, None)


def test_vanilla_conforms(tmp_path):
    metrics = check_method("vanilla", tmp_path)
    assert {"val", "test", "meta"} <= set(metrics)
    assert 0.0 <= metrics["test"]["F1"] <= 1.0


def _no_mechanism(self, notes):
    return NO_MECHANISM


class OkUntrained(Method):
    """Returns a freshly initialised (seeded) backbone: trivially conforming."""

    kind = "post-hoc"
    engagement = _no_mechanism

    def run(self, ctx, params):
        return ctx.new_model()


class BrokenRandom(Method):
    """Initialises its model from an unseeded source: not reproducible."""

    kind = "post-hoc"
    engagement = _no_mechanism

    def run(self, ctx, params):
        model = ctx.new_model()
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        with torch.no_grad():
            for p in model.parameters():
                # small enough that the softmax never saturates to the same one-hot
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        return model


class _Peeking(nn.Module):
    """Adds a bias from the attribute tensors of the dataset: reads the attribute at inference."""

    def __init__(self, base: nn.Module, attrs: dict) -> None:
        super().__init__()
        self.base = base
        self.attrs = attrs

    def forward(self, x):
        share = self.attrs["skin_tone"].float().mean()
        out = self.base(x)
        return out + 5.0 * share * torch.arange(out.shape[1], dtype=out.dtype)


class BrokenPeeks(Method):
    """Declared attribute-free but looks at the attribute."""

    kind = "post-hoc"
    needs_attribute_at_inference = False
    engagement = _no_mechanism

    def run(self, ctx, params):
        return _Peeking(ctx.new_model(), ctx.bundle.data.attrs)


class BrokenShape(Method):
    """Returns logits with one column too many."""

    kind = "post-hoc"
    engagement = _no_mechanism

    def run(self, ctx, params):
        return ctx.new_model(num_classes=ctx.n_classes + 1)


def _register(name, cls):
    METHODS.register(name, override=True)(cls)
    return cls


def test_untrained_plugin_conforms(tmp_path, registry_guard):
    check_method(_register("ok_untrained", OkUntrained), tmp_path)


def test_nondeterministic_method_fails(tmp_path, registry_guard):
    with pytest.raises(AssertionError, match="same seed"):
        check_method(_register("broken_random", BrokenRandom), tmp_path)


def test_attribute_reading_method_fails(tmp_path, registry_guard):
    with pytest.raises(AssertionError, match="attribute-free"):
        check_method(_register("broken_peeks", BrokenPeeks), tmp_path)
    # declared as needing the attribute, the same model passes that check
    BrokenPeeks.needs_attribute_at_inference = True
    try:
        check_method("broken_peeks", tmp_path / "again")
    finally:
        BrokenPeeks.needs_attribute_at_inference = False


def test_wrong_output_shape_fails(tmp_path, registry_guard):
    with pytest.raises(AssertionError, match="one probability column per class"):
        check_method(_register("broken_shape", BrokenShape), tmp_path)


def test_the_method_contract_example_is_a_conforming_plugin(tmp_path, fresh_registries):
    """The plugin in ``fairbench.run.method``'s docstring, loaded as a ``--plugin`` file, uses
    only top-level names and passes the conformance checks."""
    import textwrap

    from fairbench.core.registry import load_plugin_file
    from fairbench.run import method as contract

    code = textwrap.dedent(contract.__doc__.split("::\n", 1)[1])
    assert "from fairbench import" in code and "from fairbench." not in code
    plugin = tmp_path / "mymethod.py"
    plugin.write_text(code)
    load_plugin_file(str(plugin))
    metrics = check_method("mymethod", tmp_path / "runs")
    assert 0.0 <= metrics["test"]["F1"] <= 1.0


def test_import_fairbench_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, fairbench; assert 'torch' not in sys.modules; "
            "assert callable(fairbench.register_method); assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


class Undeclared(Method):
    """Conforms in every way but does not say what shows that its mechanism acted."""

    kind = "post-hoc"

    def run(self, ctx, params):
        return ctx.new_model()


def test_a_method_without_an_engagement_record_fails(tmp_path, registry_guard):
    with pytest.raises(AssertionError, match="declare engagement"):
        check_method(_register("undeclared", Undeclared), tmp_path)
