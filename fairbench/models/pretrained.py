"""ImageNet-pretrained backbones from local files: where they are looked for, and loading them
the way timm does.

``--pretrained`` (``pretrained = true`` in a suite's dataset entry or a ``--config`` file)
starts a timm backbone (``resnet18``, ``timm_vgg11``, any ``timm:<name>``) from its pretrained
weights instead of random ones. Nothing is downloaded: the weights file is looked for, in
order,

1. in the weights folder (``--weights-dir DIR``, else the ``FAIRBENCH_WEIGHTS_DIR``
   environment variable), as ``<model>.safetensors`` / ``.pth`` / ``.bin`` / ``.pt``, the same
   with the pretrained tag (``resnet18.a1_in1k.safetensors``), or in the Hugging Face layout
   of timm's hub id (``DIR/timm/resnet18.a1_in1k/model.safetensors`` or
   ``pytorch_model.bin``);
2. in the Hugging Face hub cache (``~/.cache/huggingface/hub``, or ``HF_HOME``), where
   ``timm.create_model(name, pretrained=True)`` on a machine with network access leaves it,

and a missing file is one line naming the places and how to get it. The file is loaded by
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH),
num_classes=0)`` (timm's own loader: its key filters and the classifier dropped, since
fairbench puts its own head sized to the dataset's classes). The run's identity holds the
file's sha256, as for ``--weights``. fairbench normalises images with ImageNet's mean and std;
a model whose pretrained configuration asks for another normalisation is refused in one line
rather than fed inputs it was not trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fairbench.core.errors import FairbenchError

#: the environment variable naming the weights folder when --weights-dir is not given
WEIGHTS_DIR_ENV = "FAIRBENCH_WEIGHTS_DIR"
#: file endings a weights file may have, in the order they are looked for
SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")
#: backbone names whose body is a timm model, and that model's name
TIMM_BACKBONES = {"resnet18": "resnet18", "timm_vgg11": "vgg11"}


def timm_name(backbone: str) -> str | None:
    """The timm model behind ``backbone`` (``None`` when it has none: no pretrained weights)."""
    if backbone.startswith("timm:"):
        return backbone[5:]
    return TIMM_BACKBONES.get(backbone)


def weights_dir(given: str | None) -> Path | None:
    """The weights folder: ``given`` (``--weights-dir``), else ``$FAIRBENCH_WEIGHTS_DIR``."""
    value = given or os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def candidates(model: str, folder: Path) -> list[Path]:
    """The paths a weights file of timm model ``model`` is looked for in ``folder``."""
    import timm

    names = [model]
    cfg = timm.models.get_pretrained_cfg(model)
    tag = getattr(cfg, "tag", None) if cfg is not None else None
    if tag:
        names.append(f"{model}.{tag}")
    out = [folder / f"{n}{s}" for n in names for s in SUFFIXES]
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub:
        out += [folder / hub / "model.safetensors", folder / hub / "pytorch_model.bin"]
    return out


def _from_hub_cache(model: str) -> Path | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm requires huggingface_hub
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def find_pretrained(backbone: str, given_dir: str | None) -> Path:
    """The local pretrained weights file of ``backbone`` (module docstring), or one clear
    error naming where it was looked for and how to get it."""
    model = timm_name(backbone)
    if model is None:
        raise FairbenchError(
            f"backbone {backbone!r} has no pretrained weights in fairbench (its body is not a "
            "timm model); use --backbone resnet18, timm_vgg11 or timm:<name>, or start from a "
            "fairbench --weights file")
    import timm

    if not timm.is_model(model):
        raise FairbenchError(f"unknown timm model {model!r}; see timm.list_models()")
    if timm.models.get_pretrained_cfg(model) is None:
        raise FairbenchError(f"timm model {model!r} has no pretrained configuration; "
                             "see timm.list_pretrained()")
    folder = weights_dir(given_dir)
    looked: list[str] = []
    if folder is not None:
        if not folder.is_dir():
            raise FairbenchError(f"weights folder '{folder}' does not exist; give the folder "
                                 f"holding {model}.safetensors (--weights-dir or "
                                 f"${WEIGHTS_DIR_ENV})")
        for path in candidates(model, folder):
            if path.is_file():
                return path
        looked.append(f"'{folder}' ({model}.safetensors/.pth/.bin/.pt or the hub layout)")
    cached = _from_hub_cache(model)
    if cached is not None:
        return cached
    looked.append("the Hugging Face hub cache")
    raise FairbenchError(
        f"no pretrained weights of {model!r} found in {' or '.join(looked)}; nothing is "
        f"downloaded at run time: on a machine with network run python -c \"import timm, "
        f"torch; torch.save(timm.create_model('{model}', pretrained=True).state_dict(), "
        f"'{model}.pth')\" and put {model}.pth in a folder named by --weights-dir or "
        f"${WEIGHTS_DIR_ENV}")


def pretrained_body(model: str, path: str | Path, **params: Any) -> Any:
    """timm model ``model`` without its classifier, its weights from the file ``path`` by
    timm's loader; refused when its pretrained normalisation is not ImageNet's."""
    import timm

    from fairbench.data.loaders import MEAN, STD

    try:
        body = timm.create_model(model, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(path)), **params)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairbenchError(f"pretrained weights '{path}' do not load into timm's {model!r} "
                             f"({first[:200]}); give the file of this model") from None
    cfg = getattr(body, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", MEAN)), tuple(cfg.get("std", STD))
    if any(abs(a - b) > 1e-4 for a, b in zip(mean + std, MEAN + STD)):
        raise FairbenchError(f"timm model {model!r} was pretrained on inputs normalised with "
                             f"mean {mean} and std {std}; fairbench normalises with "
                             f"ImageNet's {MEAN}, {STD}: choose a model pretrained that way")
    return body
