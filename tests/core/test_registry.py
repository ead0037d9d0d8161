"""Registries (timm style), entry-point plugins and ``--plugin FILE.py``."""

from __future__ import annotations

import sys
import textwrap
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from fairbench import (
    FairbenchError,
    Method,
    PluginError,
    UnknownNameError,
    create_backbone,
    create_dataset,
    create_method,
    get_dataset_class,
    get_method_class,
    list_backbones,
    list_datasets,
    list_methods,
)
from fairbench.cli.main import main
from fairbench.core.registry import Registry, load_plugin_file
from fairbench.run.method import METHODS


# -- the Registry class ------------------------------------------------------------------------
def _registry(*names: str) -> Registry:
    reg: Registry = Registry("widget", "fairbench.test_widgets_none")
    for n in names:
        reg.register(n)(type(f"W_{n}", (), {}))
    return reg


def test_register_get_create_list_with_wildcards():
    reg = _registry("fairprune", "fairquantize", "vanilla", "fairadv")

    @reg.register("maker")
    def maker(a: int = 1, b: int = 2):
        return (a, b)

    assert reg.list("fair*") == ["fairadv", "fairprune", "fairquantize"]
    assert reg.list("*quant*") == ["fairquantize"]
    assert reg.list("?anilla") == ["vanilla"]
    assert reg.list() == sorted(["fairprune", "fairquantize", "vanilla", "fairadv", "maker"])
    assert reg.list("nothing*") == []
    assert reg.get("maker") is maker and maker.registered_name == "maker"
    assert "maker" in reg and "makerx" not in reg
    # create passes keyword arguments and drops None values (as timm does)
    assert reg.create("maker", a=5, b=None) == (5, 2)


def test_unknown_name_lists_close_matches():
    reg = _registry("fairprune", "fairquantize", "vanilla")
    with pytest.raises(UnknownNameError) as exc:
        reg.get("fairprun")
    msg = str(exc.value)
    assert "fairprune" in msg and "did you mean" in msg and "'fairprun'" in msg
    assert "vanilla" not in msg  # only the close ones
    with pytest.raises(UnknownNameError) as exc:
        reg.get("zzzzzz")
    # nothing close: every known name is listed
    assert all(n in str(exc.value) for n in ("fairprune", "fairquantize", "vanilla"))
    assert isinstance(exc.value, FairbenchError) and isinstance(exc.value, KeyError)


def test_duplicate_and_invalid_names():
    reg = _registry("a")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("Other", (), {}))
    replacement = type("Replacement", (), {})
    reg.register("a", override=True)(replacement)
    assert reg.get("a") is replacement
    for bad in ("", " a", "two words"):
        with pytest.raises(ValueError):
            reg.register(bad)


def test_builtin_registries():
    fair = list_methods("fair*")
    assert fair and all(n.startswith("fair") for n in fair) and "vanilla" not in fair
    assert "vanilla" in list_methods()
    assert list_methods("vanilla") == ["vanilla"]
    assert "synthderm" in list_datasets() and list_datasets("synth*") == ["synthderm"]
    assert {"smallcnn", "resnet18", "vgg11"} <= set(list_backbones())
    m = create_method("vanilla")
    assert isinstance(m, Method) and m.name == "vanilla"
    assert get_method_class("vanilla").kind == "baseline"
    ds = create_dataset("synthderm", n_samples="120", dark_fraction=0.3)
    assert ds.params.n_samples == 120 and ds.params.dark_fraction == 0.3
    with pytest.raises(UnknownNameError, match="vanilla"):
        create_method("vanila")
    with pytest.raises(UnknownNameError, match="synthderm"):
        get_dataset_class("synthderma")
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_backbone("resnet19", num_classes=2, image_size=16)
    with pytest.raises(UnknownNameError, match="no parameters"):
        create_method("vanilla", epochs=3)


# -- entry points --------------------------------------------------------------------------------
def _write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


@pytest.fixture
def fake_entry_points(monkeypatch, tmp_path):
    """Install modules in tmp_path and make importlib.metadata report entry points to them."""
    monkeypatch.syspath_prepend(str(tmp_path))
    eps: list[metadata.EntryPoint] = []
    real = metadata.entry_points

    def entry_points(**kw):
        group = kw.get("group")
        mine = [ep for ep in eps if ep.group == group]
        return mine if group and group.startswith("fairbench") else real(**kw)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    yield eps, tmp_path
    for mod in [m for m in sys.modules if m.startswith("fbtest_ep_")]:
        del sys.modules[mod]


def test_entry_point_plugins_load_and_broken_one_is_reported(fake_entry_points):
    eps, root = fake_entry_points
    _write(root / "fbtest_ep_good.py", """
        class GoodThing:
            pass
    """)
    _write(root / "fbtest_ep_bad.py", """
        raise RuntimeError("boom at import")
    """)
    eps += [
        metadata.EntryPoint("goodthing", "fbtest_ep_good:GoodThing", "fairbench.things"),
        metadata.EntryPoint("badthing", "fbtest_ep_bad:Thing", "fairbench.things"),
    ]
    reg: Registry = Registry("thing", "fairbench.things")
    reg.register("builtin")(type("Builtin", (), {}))
    with pytest.warns(UserWarning, match="badthing"):
        names = reg.list()
    assert names == ["builtin", "goodthing"]
    assert reg.get("goodthing").__name__ == "GoodThing"
    assert "badthing" in reg.plugin_errors
    assert "boom at import" in reg.plugin_errors["badthing"]
    with pytest.raises(UnknownNameError) as exc:
        reg.get("badthing")
    assert "failed to load" in str(exc.value) and "fbtest_ep_bad" in str(exc.value)


def test_entry_point_module_registers_method(fake_entry_points, fresh_registries):
    eps, root = fake_entry_points
    _write(root / "fbtest_ep_methods.py", """
        from fairbench import Method, register_method

        @register_method("epmethod")
        class EpMethod(Method):
            '''A method shipped by a third-party package.'''
            def run(self, ctx, params):
                return ctx.vanilla()
    """)
    _write(root / "fbtest_ep_broken.py", "import this_module_does_not_exist_anywhere\n")
    eps += [
        metadata.EntryPoint("epmethod", "fbtest_ep_methods", "fairbench.methods"),
        metadata.EntryPoint("broken", "fbtest_ep_broken", "fairbench.methods"),
    ]
    METHODS._entry_points_loaded = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list_methods("ep*") == ["epmethod"]
    assert "vanilla" in list_methods()  # the broken plugin did not break the others
    assert "broken" in METHODS.plugin_errors
    result = CliRunner().invoke(main, ["list", "methods"])
    assert result.exit_code == 0, result.output
    assert "epmethod" in result.output and "vanilla" in result.output
    assert "warning:" in result.output and "broken" in result.output


# -- local plugin files --------------------------------------------------------------------------
GOOD_PLUGIN = """
    from fairbench import Method, register_method
    from fairbench import param
    from dataclasses import dataclass

    @dataclass
    class P:
        alpha: float = param(0.5, help="unused", min=0.0, max=1.0)

    @register_method("{name}")
    class Plugged(Method):
        '''A plugin method that returns the shared baseline.'''
        Params = P
        kind = "post-hoc"
        def run(self, ctx, params):
            return ctx.vanilla()
"""


def test_plugin_file_registers_method(tmp_path, fresh_registries):
    plugin = _write(tmp_path / "myplugin.py", GOOD_PLUGIN.format(name="plugmethod_a"))
    assert "plugmethod_a" not in list_methods()
    load_plugin_file(str(plugin))
    assert "plugmethod_a" in list_methods("plug*")
    m = create_method("plugmethod_a", alpha="0.25")
    assert m.params.alpha == 0.25
    load_plugin_file(str(plugin))  # loading twice is harmless


def test_plugin_that_raises_is_named_and_others_still_load(tmp_path, fresh_registries):
    bad = _write(tmp_path / "badplugin.py", "x = 1\nraise ValueError('plugin exploded')\n")
    syntax = _write(tmp_path / "syntaxplugin.py", "def broken(:\n")
    good = _write(tmp_path / "goodplugin.py", GOOD_PLUGIN.format(name="plugmethod_b"))
    with pytest.raises(PluginError) as exc:
        load_plugin_file(str(bad))
    msg = str(exc.value)
    assert "badplugin.py" in msg and "plugin exploded" in msg and "\n" not in msg
    assert not any("badplugin" in m for m in sys.modules)
    with pytest.raises(PluginError, match="syntaxplugin.py"):
        load_plugin_file(str(syntax))
    with pytest.raises(PluginError, match="nothere.py"):
        load_plugin_file(str(tmp_path / "nothere.py"))
    load_plugin_file(str(good))
    assert "plugmethod_b" in list_methods() and "vanilla" in list_methods()


def test_cli_plugin_errors_and_use(tmp_path, fresh_registries, tiny_cache):
    bad = _write(tmp_path / "badplugin2.py", "raise ImportError('missing dependency xyz')\n")
    good = _write(tmp_path / "goodplugin2.py", GOOD_PLUGIN.format(name="plugmethod_c"))
    runner = CliRunner()
    r = runner.invoke(main, ["list", "methods", "--plugin", str(bad)])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "badplugin2.py" in lines[0]
    assert "missing dependency xyz" in lines[0]

    r = runner.invoke(main, ["list", "methods", "plug*", "--plugin", str(good)])
    assert r.exit_code == 0 and "plugmethod_c" in r.output and "post-hoc" in r.output

    runs = tmp_path / "runs"
    r = runner.invoke(main, [
        "run", "--plugin", str(good), "--method", "plugmethod_c", "--param", "alpha=0.1",
        "--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "--runs-dir", str(runs), "--cache-dir", str(tiny_cache), "-q"])
    assert r.exit_code == 0, r.output
    run_dirs = list((runs / "synthderm" / "plugmethod_c").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "metrics.json").is_file()
