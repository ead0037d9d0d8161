"""``synthderm``: procedurally drawn skin-lesion images with a built-in, controllable bias.

Every image shows one lesion on a patch of skin. The lesion's class decides its prototype
(colour, shape, border irregularity and texture: uniform, dotted, reticular, ringed or
speckled); each sample varies around its prototype, so classes overlap a little. Two
sensitive attributes come with each image:

* ``skin_tone``: Fitzpatrick type I–VI (also kept as ``fitzpatrick``), grouped light (I–III)
  / dark (IV–VI); it sets the skin colour.
* ``sex``: female / male; it has no effect on the image (a control attribute).

The bias knobs (with their defaults) make a vanilla model measurably worse on dark skin:

* ``dark_fraction`` (0.25): dark skin is the minority of the data;
* ``dark_contrast`` (0.4): on dark skin the lesion's colour and texture are blended toward the
  skin colour (1.0 = as on light skin), so the cues are fainter;
* ``label_noise_light`` / ``label_noise_dark`` (0.02 / 0.10): the share of labels replaced by a
  random other class, per group (the image shows the true class; every split part has the
  noise, as real annotations do).

* ``marker_shortcut`` (0.8): a purple surgical-ink mark near the lesion, a known shortcut of
  dermoscopy data. On light skin it appears on a share ``marker_shortcut`` of the images of
  the last class and on ``marker_base_rate`` (0.1) of the others, so it predicts the class; on
  dark skin it appears on ``marker_base_rate`` of the images whatever their class. A model that
  learns the shortcut from the majority is misled on the minority: this is the part of the gap
  that mitigation can close (0 turns it off).

More knobs serve the scenarios below (at their defaults they change nothing):
``dark_class_imbalance`` (None: as ``class_imbalance``) gives dark skin its own class mix,
``lesion_contrast`` (1.0) fades every lesion, on every skin, toward the skin colour,
``marker_dark_rate`` (None: ``marker_base_rate``) is the ink-mark rate on dark skin, and
``lookalike`` (0) draws the last class's lesion closer to the first class's (colour, shape,
size, and from 0.5 its texture), on every skin.

**Scenarios** (``scenario=NAME``, e.g. ``--data-param scenario=annotation``; in a suite
``params = { scenario = "annotation" }``) each switch on one bias mechanism, after Jones et
al. (Nature Machine Intelligence 2024: prevalence, presentation, annotation) plus
under-representation and a spurious shortcut, with everything else alike between the groups
(half the images on dark skin, the same class mix, rendering, exact labels, no ink marks):

* ``control``: no mechanism (the two skin tones differ in skin colour only);
* ``representation``: dark skin is a small minority (``dark_fraction`` 0.05);
* ``prevalence``: the class mix differs between groups: on dark skin class k has weight
  0.3^k (``dark_class_imbalance`` 0.7) instead of 0.7^k;
* ``presentation``: lesions are fainter on dark skin (``dark_contrast`` 0.35), labels exact;
* ``annotation``: 40 % of the dark-skin labels are replaced by a random other class
  (``label_noise_dark`` 0.4) in every split part; the images show the true class, which the
  table keeps (``true_label``) so that runs report test metrics against both;
* ``shortcut``: an ink mark on every light-skin image of the last class and on no other
  light-skin image, on 20 % of dark-skin images whatever their class; the last class's lesion
  is drawn close to the first class's (``lookalike`` 0.8, on every skin), so on light skin the
  mark is the easier cue, and on dark skin it misleads.

A scenario sets the knobs' defaults; knobs given explicitly win, so a mixture is a scenario
plus knobs (``scenario=annotation label_noise_dark=0.2 dark_fraction=0.2``), or the default
``custom`` with any knobs. The strengths were calibrated by measuring a vanilla model
(``benchmarks/bench_scenarios.py``: 1,200 images, 32 px, smallcnn, 6 epochs): each
mechanism opens a light − dark F1 gap of at least 5 points, ``control`` none. With a lesion
as clear as the mark, a vanilla model ignored the mark; fading every lesion
(``lesion_contrast`` 0.4) made it use the mark but also opened a gap of its own (fainter
lesions are harder to see on dark skin: 10 points without any mark), while the look-alike
class opens none without the mark (``control`` with ``lookalike`` 0.8: −1 ± 4 points), so the
shortcut scenario uses the look-alike class.

Patients carry 1 or more images (``images_per_patient``, mean), sharing skin type and sex, so
patient-grouped splits are exercised. Everything is deterministic from ``seed``: the table
(classes, attributes, noisy labels) from one random stream, the drawing parameters from a
second, so the table is built without rendering and rendering does not depend on chunk size.
Rendering is vectorised over chunks of images (numpy), a few thousand images per second per
core at 64 px. Each image has a binary lesion mask (the lesion's true extent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from fairbench.core.errors import ParamError
from fairbench.core.limits import human_bytes
from fairbench.core.params import param
from fairbench.data.dataset import DatasetAdapter, ImageSpec, SampleTable, register_dataset

# Fitzpatrick I..VI base skin colours (RGB)
SKIN_RGB = np.array(
    [[242, 214, 196], [230, 192, 165], [205, 160, 124],
     [160, 112, 80], [115, 78, 54], [78, 54, 40]], dtype=np.float32)

TEXTURES = ("uniform", "dots", "reticular", "ring", "speckle")

# prototypes: name, RGB, aspect ratio, border irregularity, radius, texture
PROTOTYPES = (
    ("nevus", (120, 78, 50), 1.0, 0.04, 0.30, "uniform"),
    ("melanoma", (70, 42, 36), 1.15, 0.28, 0.34, "speckle"),
    ("bcc", (205, 130, 128), 1.25, 0.10, 0.27, "ring"),
    ("keratosis", (150, 108, 66), 1.5, 0.14, 0.31, "dots"),
    ("vascular", (175, 45, 55), 1.0, 0.07, 0.23, "reticular"),
    ("dermatofibroma", (140, 92, 84), 1.1, 0.06, 0.24, "ring"),
    ("actinic", (192, 142, 122), 1.7, 0.18, 0.29, "speckle"),
    ("scc", (168, 84, 72), 1.3, 0.22, 0.28, "dots"),
)
MAX_CLASSES = len(PROTOTYPES)
#: the most images n_val or n_test may add, and the most images in all (5.7 GiB of 32 px
#: images, about 4 minutes of generation per million on one core)
MAX_EXTRA = 500_000
MAX_IMAGES = 2_000_000
#: generator streams of the added validation and test images (0: the n_samples images)
EXTRA_STREAMS = {"val": 2, "test": 3}


@dataclass
class SynthDermParams:
    n_samples: int = param(3000, help="number of images", min=20)
    n_classes: int = param(5, help="lesion classes", min=2, max=MAX_CLASSES)
    seed: int = param(0, help="data seed (independent of the run seed)", min=0)
    dark_fraction: float = param(0.25, help="share of dark skin (IV-VI)", min=0.0, max=1.0,
                                 min_exclusive=True, max_exclusive=True)
    dark_contrast: float = param(0.4, help="lesion contrast on dark skin, 1 = as on light",
                                 min=0.0, max=1.0, min_exclusive=True)
    label_noise_light: float = param(0.02, help="label noise on light skin", min=0.0, max=0.9)
    label_noise_dark: float = param(0.10, help="label noise on dark skin", min=0.0, max=0.9)
    female_fraction: float = param(0.5, help="share of female patients", min=0.0, max=1.0,
                                   min_exclusive=True, max_exclusive=True)
    class_imbalance: float = param(0.3, help="class k has weight (1-x)^k", min=0.0, max=0.9)
    images_per_patient: float = param(1.5, help="mean images per patient", min=1.0)
    marker_shortcut: float = param(0.8, help="ink-mark rate on the last class, light skin only",
                                   min=0.0, max=1.0)
    marker_base_rate: float = param(0.1, help="ink-mark rate otherwise", min=0.0, max=1.0)
    scenario: Literal["custom", "control", "representation", "prevalence", "presentation",
                      "annotation", "shortcut"] = param(
        "custom", help="one isolated bias mechanism (control, representation, prevalence, "
                       "presentation, annotation, shortcut) setting the knobs' defaults; "
                       "custom = the knobs as given")
    dark_class_imbalance: float | None = param(
        None, help="class imbalance on dark skin (prevalence disparity); None = as "
                   "class_imbalance", min=0.0, max=0.95)
    lesion_contrast: float = param(1.0, help="lesion contrast on every skin (the lesion's "
                                             "difficulty)", min=0.0, max=1.0, min_exclusive=True)
    marker_dark_rate: float | None = param(
        None, help="ink-mark rate on dark skin, any class; None = marker_base_rate",
        min=0.0, max=1.0)
    lookalike: float = param(0.0, help="how far the last class's lesion is drawn toward the "
                                       "first class's (colour, shape, size; its texture from "
                                       "0.5): 0 = its own, 1 = the same", min=0.0, max=1.0)
    n_val: int = param(0, help="images added to the validation part, drawn by the same "
                               "generator from a stream of their own (the split of the "
                               "n_samples images is unchanged)", min=0, max=MAX_EXTRA)
    n_test: int = param(0, help="images added to the test part, drawn likewise: a test part "
                                "as large as the question needs, never trained on or chosen "
                                "on", min=0, max=MAX_EXTRA)


#: the knobs of a world without any bias mechanism: groups alike in size, class mix,
#: rendering, labels and markers
ALIKE: dict[str, Any] = {
    "dark_fraction": 0.5, "dark_contrast": 1.0, "label_noise_light": 0.0,
    "label_noise_dark": 0.0, "marker_shortcut": 0.0, "marker_base_rate": 0.0,
    "dark_class_imbalance": None, "lesion_contrast": 1.0, "marker_dark_rate": None,
    "lookalike": 0.0,
}

#: named scenarios: each switches on one mechanism of :data:`ALIKE` (calibrated by measuring
#: a vanilla model; see the module docstring)
SCENARIOS: dict[str, dict[str, Any]] = {
    "control": dict(ALIKE),
    "representation": {**ALIKE, "dark_fraction": 0.05},
    "prevalence": {**ALIKE, "dark_class_imbalance": 0.7},
    "presentation": {**ALIKE, "dark_contrast": 0.35},
    "annotation": {**ALIKE, "label_noise_dark": 0.4},
    "shortcut": {**ALIKE, "marker_shortcut": 1.0, "marker_dark_rate": 0.2, "lookalike": 0.8},
}

#: knobs added after the first release, left out of a table's identity while at these
#: values so that runs and caches made before them keep their names
_LATER_KNOBS: dict[str, Any] = {"scenario": "custom", "dark_class_imbalance": None,
                                "lesion_contrast": 1.0, "marker_dark_rate": None,
                                "lookalike": 0.0, "n_val": 0, "n_test": 0}


def scenario_params(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` dataset parameters with a named scenario's knobs filled in: the scenario sets
    the defaults, knobs given explicitly win (a mixture on top of one mechanism)."""
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    name = str(raw.get("scenario", "custom")).strip()
    return {**SCENARIOS[name], **raw} if name in SCENARIOS else raw


@register_dataset("synthderm")
class SynthDerm(DatasetAdapter):
    """Synthetic dermatology images with lesion masks and a controllable skin-tone bias."""

    Params = SynthDermParams
    requires_data_root = False
    default_image_size = 32
    default_backbone = "smallcnn"
    tasks = ("classification", "segmentation")
    scenarios = SCENARIOS

    def __init__(self, params: Any = None, data_root: Any = None) -> None:
        if params is None or isinstance(params, dict):
            params = scenario_params(dict(params or {}))
        elif getattr(params, "scenario", "custom") != "custom":
            # a built Params object no longer says which knobs were given: its other knobs
            # would silently keep their defaults under the scenario's name
            raise ParamError(f"synthderm scenario {params.scenario!r} is applied to dataset "
                             "parameters given as a dict (create_dataset('synthderm', "
                             f"scenario={params.scenario!r}, ...) or --data-param "
                             f"scenario={params.scenario}), not to a built SynthDermParams")
        super().__init__(params, data_root)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        for key, neutral in _LATER_KNOBS.items():
            if cfg["params"].get(key, neutral) == neutral:
                cfg["params"].pop(key, None)
        return cfg

    def build_table(self) -> SampleTable:
        return SampleTable(
            build_metadata(self.params),
            classes=[PROTOTYPES[k][0] for k in range(self.params.n_classes)],
            attributes={
                "skin_tone": ["light", "dark"],
                "sex": ["female", "male"],
                "fitzpatrick": ["I", "II", "III", "IV", "V", "VI"],
            },
            default_attribute="skin_tone",
            has_masks=True,
            mask_classes=["background", "lesion"],
        )

    def source_fingerprint(self, table: SampleTable) -> str:
        return "generated:v1"

    def fill_images(self, table: SampleTable, spec: ImageSpec, out: np.ndarray,
                    masks_out: np.ndarray | None = None,
                    progress: Callable[[int], None] | None = None) -> None:
        """Draw the images of ``table`` into ``out`` and their lesion masks into
        ``masks_out``; the added validation and test images from their own streams."""
        df = table.df
        if "stream" not in df:
            render_into(df, self.params, spec.size, out, masks_out, progress=progress)
            return
        for stream in sorted(df["stream"].unique()):
            rows = np.flatnonzero(df["stream"].to_numpy() == stream)
            part_out = np.zeros((len(rows), *out.shape[1:]), dtype=out.dtype)
            part_masks = (None if masks_out is None else
                          np.zeros((len(rows), *masks_out.shape[1:]), dtype=masks_out.dtype))
            render_into(df.iloc[rows].reset_index(drop=True), self.params, spec.size, part_out,
                        part_masks, progress=progress, stream=int(stream))
            out[rows] = part_out
            if masks_out is not None:
                masks_out[rows] = part_masks

    def counterfactual_images(self, table: SampleTable, spec: ImageSpec,
                              positions: np.ndarray) -> np.ndarray:
        """The twins of the rows ``positions``: each image drawn again from its own random
        draws with only its skin switched to the other group's (:func:`twin_fitzpatrick`;
        the scenario's tone-dependent factors held at the original's: lesion contrast,
        labels, ink mark). Deterministic: a twin depends on its image's seed only."""
        df = table.df
        streams = df["stream"].to_numpy() if "stream" in df else np.zeros(len(df), np.int64)
        positions = np.asarray(positions)
        out = np.zeros((len(positions), spec.size, spec.size, 3), dtype=np.uint8)
        for stream in np.unique(streams[positions]):
            rows = np.flatnonzero(streams == stream)  # a stream's draws are made whole
            sub = df.iloc[rows].reset_index(drop=True)
            mine = np.flatnonzero(streams[positions] == stream)
            # only the asked rows are drawn (their places in the stream)
            local = np.searchsorted(rows, positions[mine])
            twins = np.zeros((len(mine), spec.size, spec.size, 3), dtype=np.uint8)
            render_into(sub, self.params, spec.size, twins, stream=int(stream),
                        skin_fitz=twin_fitzpatrick(sub["attr_fitzpatrick"].to_numpy()),
                        rows=local)
            out[mine] = twins
        return out


def twin_fitzpatrick(fitz: np.ndarray) -> np.ndarray:
    """The Fitzpatrick type of an image's twin: the same place on the other group's scale
    (I, II, III <-> IV, V, VI)."""
    fitz = np.asarray(fitz)
    return np.where(fitz < 3, fitz + 3, fitz - 3)


def build_metadata(p: SynthDermParams) -> pd.DataFrame:
    """The sample table of ``p`` (true and observed labels, attributes, patients): the
    ``n_samples`` images, then the ``n_val`` and ``n_test`` added ones, each drawn from its own
    generator stream with its own patients, with ``fixed_part`` naming their part and
    ``stream`` the stream their pixels are drawn from (both columns only when images are
    added, so tables without them are unchanged)."""
    base = _draw_rows(p, p.n_samples, np.random.default_rng([p.seed, 0]), "")
    extra = {part: getattr(p, f"n_{part}") for part in EXTRA_STREAMS}
    if not any(extra.values()):
        return base
    frames = [base.assign(fixed_part="", stream=0)]
    for part, n in extra.items():
        if n:
            stream = EXTRA_STREAMS[part]
            rows = _draw_rows(p, n, np.random.default_rng([p.seed, 0, stream]), part[0])
            frames.append(rows.assign(fixed_part=part, stream=stream))
    return pd.concat(frames, ignore_index=True)


def _draw_rows(p: SynthDermParams, n: int, rng: np.random.Generator, tag: str) -> pd.DataFrame:
    """``n`` rows drawn from ``rng``; ``tag`` sets the added parts' ids apart."""
    # patients: sizes 1 + Poisson(mean - 1), until n images
    sizes = 1 + rng.poisson(p.images_per_patient - 1.0, size=n)
    patient_of = np.repeat(np.arange(n), sizes)[:n]
    n_patients = int(patient_of.max()) + 1
    dark_p = rng.random(n_patients) < p.dark_fraction
    fitz_p = np.where(dark_p, rng.integers(3, 6, n_patients), rng.integers(0, 3, n_patients))
    male_p = rng.random(n_patients) >= p.female_fraction
    weights = (1.0 - p.class_imbalance) ** np.arange(p.n_classes)
    dark = dark_p[patient_of]
    if p.dark_class_imbalance is None:
        true_label = rng.choice(p.n_classes, size=n, p=weights / weights.sum())
    else:  # prevalence disparity: each group draws its classes from its own mix
        dark_weights = (1.0 - p.dark_class_imbalance) ** np.arange(p.n_classes)
        cdf = np.stack([np.cumsum(w / w.sum()) for w in (weights, dark_weights)])
        u = rng.random(n)
        true_label = np.minimum((u[:, None] >= cdf[dark.astype(int)]).sum(1), p.n_classes - 1)
    noise = np.where(dark, p.label_noise_dark, p.label_noise_light)
    flip = rng.random(n) < noise
    other = (true_label + rng.integers(1, p.n_classes, n)) % p.n_classes
    label = np.where(flip, other, true_label)
    shortcut_class = p.n_classes - 1
    dark_rate = p.marker_base_rate if p.marker_dark_rate is None else p.marker_dark_rate
    marker_p = np.where(~dark & (true_label == shortcut_class),
                        max(p.marker_shortcut, p.marker_base_rate),
                        np.where(dark, dark_rate, p.marker_base_rate))
    marker = rng.random(n) < marker_p
    return pd.DataFrame({
        "sample_id": [f"sd{p.seed}-{tag}{i:06d}" for i in range(n)],
        "path": "",
        "label": label.astype(np.int64),
        "true_label": true_label.astype(np.int64),
        "attr_skin_tone": dark.astype(np.int64),
        "attr_sex": male_p[patient_of].astype(np.int64),
        "attr_fitzpatrick": fitz_p[patient_of].astype(np.int64),
        "patient_id": [f"p{p.seed}-{tag}{j:06d}" for j in patient_of],
        "marker": marker,
    })


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, g, g) to (N, size, size)."""
    g = grid.shape[1]
    coords = np.linspace(0, g - 1, size, dtype=np.float32)
    i0 = np.floor(coords).astype(np.int64).clip(0, g - 2)
    t = (coords - i0)[None, :, None]
    rows = grid[:, i0, :] * (1 - t) + grid[:, i0 + 1, :] * t
    t2 = (coords - i0)[None, None, :]
    return rows[:, :, i0] * (1 - t2) + rows[:, :, i0 + 1] * t2


#: pore noise is drawn in fixed blocks of images, whatever the rendering chunk
PORE_BLOCK = 256


def _pore_noise(pore_seed: np.ndarray, sl: slice, shape: tuple[int, ...]) -> np.ndarray:
    """Pore noise (σ = 3 grey levels) of the images ``sl``: block ``k`` (images
    ``k·PORE_BLOCK`` up to the next block) is one draw from ``pore_seed[k·PORE_BLOCK]``, so
    an image's noise depends on its index only, not on how the images are chunked."""
    start, stop = int(sl.start), int(sl.stop)
    n = len(pore_seed)
    parts = []
    for block in range(start - start % PORE_BLOCK, stop, PORE_BLOCK):
        size = min(PORE_BLOCK, n - block)
        noise = np.random.default_rng(pore_seed[block]).normal(0, 3.0, (size, *shape))
        lo, hi = max(start, block) - block, min(stop, block + size) - block
        parts.append(noise[lo:hi].astype(np.float32))
    return np.concatenate(parts)


def _pore_noise_rows(pore_seed: np.ndarray, rows: np.ndarray,
                     shape: tuple[int, ...]) -> np.ndarray:
    """The pore noise of the images ``rows`` (any order): each the same as in
    :func:`_pore_noise`, drawing only the blocks that hold them."""
    out = np.empty((len(rows), *shape), np.float32)
    blocks = rows - rows % PORE_BLOCK
    for block in np.unique(blocks):
        mine = np.flatnonzero(blocks == block)
        out[mine] = _pore_noise(pore_seed, slice(int(block), int(rows[mine].max()) + 1),
                                shape)[rows[mine] - block]
    return out


def render_into(
    df: pd.DataFrame,
    p: SynthDermParams,
    size: int,
    out: np.ndarray,
    masks_out: np.ndarray | None = None,
    *,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
    stream: int = 0,
    skin_fitz: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> None:
    """Draw every row of ``df`` (from :func:`build_metadata`) into ``out`` (N×size×size×3);
    ``stream`` 0 draws the ``n_samples`` images, the others the added parts'. ``skin_fitz``:
    the counterfactual twins: the skin colour of these Fitzpatrick types instead of the rows'
    own, every other factor (its random draws, the lesion contrast of the row's own skin
    tone, the marker) held. ``rows``: draw only these rows of ``df`` (positions, any order)
    into ``out`` (len(rows)×size×size×3), each image the same as in the whole stream's
    drawing (every random draw is made for the whole stream up front, and a row's pixels
    depend on its own draws only)."""
    n = len(df)
    rng = np.random.default_rng([p.seed, 1] if stream == 0 else [p.seed, 1, stream])
    true_label = df["true_label"].to_numpy()
    fitz = df["attr_fitzpatrick"].to_numpy()
    skin_of = fitz if skin_fitz is None else np.asarray(skin_fitz)
    dark = df["attr_skin_tone"].to_numpy().astype(bool)
    proto_rgb = np.array([PROTOTYPES[k][1] for k in range(MAX_CLASSES)], np.float32)
    proto_aspect = np.array([PROTOTYPES[k][2] for k in range(MAX_CLASSES)], np.float32)
    proto_irr = np.array([PROTOTYPES[k][3] for k in range(MAX_CLASSES)], np.float32)
    proto_rad = np.array([PROTOTYPES[k][4] for k in range(MAX_CLASSES)], np.float32)
    proto_tex = np.array([TEXTURES.index(PROTOTYPES[k][5]) for k in range(MAX_CLASSES)])
    if p.lookalike > 0:  # the last class drawn closer to the first: a subtle distinction
        last, a = p.n_classes - 1, np.float32(p.lookalike)
        for arr in (proto_rgb, proto_aspect, proto_irr, proto_rad):
            arr[last] = (1 - a) * arr[last] + a * arr[0]
        if p.lookalike >= 0.5:
            proto_tex[last] = proto_tex[0]
    # per-sample drawing parameters, all drawn up front
    skin = SKIN_RGB[skin_of] + rng.normal(0, 7, (n, 3)).astype(np.float32)
    lesion = (proto_rgb[true_label] * np.exp(rng.normal(0, 0.12, (n, 1)))
              + rng.normal(0, 7, (n, 3))).astype(np.float32)
    aspect = proto_aspect[true_label] * np.exp(rng.normal(0, 0.12, n)).astype(np.float32)
    irr = np.clip(proto_irr[true_label] + rng.normal(0, 0.04, n), 0, 0.5).astype(np.float32)
    radius = proto_rad[true_label] * np.exp(rng.normal(0, 0.15, n)).astype(np.float32)
    centre = rng.uniform(-0.15, 0.15, (n, 2)).astype(np.float32)
    angle = rng.uniform(0, np.pi, n).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, (n, 3)).astype(np.float32)
    freq = rng.uniform(16, 22, n).astype(np.float32)
    light_dir = rng.normal(0, 0.06, (n, 2)).astype(np.float32)
    speckle = rng.normal(0, 1, (n, 6, 6)).astype(np.float32)
    pore_seed = rng.integers(0, 2**31, n)
    contrast = (np.where(dark, p.dark_contrast, 1.0) * p.lesion_contrast).astype(np.float32)
    marker = df["marker"].to_numpy().astype(bool)
    marker_angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    marker_tilt = rng.uniform(-0.6, 0.6, n).astype(np.float32)
    texture = proto_tex[true_label]

    lin = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    edge = 2.5 / size  # soft border about one pixel wide
    # picked rows are drawn in stream order (a chunk then touches few pore-noise blocks) and
    # written to their places in ``out``
    order = None if rows is None else np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    picked = None if rows is None else np.asarray(rows, dtype=np.int64)[order]
    n_out = n if picked is None else len(picked)
    for start in range(0, n_out, chunk):
        stop = min(n_out, start + chunk)
        # sl: the drawn rows of this chunk; dest: where they go in ``out``
        sl = slice(start, stop) if picked is None else picked[start:stop]
        dest = slice(start, stop) if order is None else order[start:stop]
        m = stop - start
        cx, cy = centre[sl, 0, None, None], centre[sl, 1, None, None]
        ca, sa = np.cos(angle[sl])[:, None, None], np.sin(angle[sl])[:, None, None]
        a = (radius[sl] * np.sqrt(aspect[sl]))[:, None, None]
        b = (radius[sl] / np.sqrt(aspect[sl]))[:, None, None]
        u = ((xx - cx) * ca + (yy - cy) * sa) / a
        v = (-(xx - cx) * sa + (yy - cy) * ca) / b
        d = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        ph = phases[sl]
        border = 1.0 + irr[sl, None, None] * (
            0.6 * np.cos(3 * theta + ph[:, 0, None, None])
            + 0.4 * np.cos(5 * theta + ph[:, 1, None, None]))
        alpha = np.clip((border - d) * (a / edge) + 0.5, 0.0, 1.0)
        # texture in [-1, 1] (negative = darker)
        tex = np.zeros((m, size, size), np.float32)
        kinds = texture[sl]
        f = freq[sl, None, None]
        for kind in np.unique(kinds):
            idx = np.flatnonzero(kinds == kind)
            if TEXTURES[kind] == "uniform":
                tex[idx] = -0.25 * (1.0 - d[idx].clip(0, 1))
            elif TEXTURES[kind] == "dots":
                s = np.sin(f[idx] * u[idx] * a[idx]) * np.sin(f[idx] * v[idx] * b[idx])
                tex[idx] = np.where(s > 0.45, -1.0, 0.2)
            elif TEXTURES[kind] == "reticular":
                tex[idx] = 0.9 * np.sin(f[idx] * (u[idx] * a[idx]) + 2.5 * np.sin(4 * v[idx]))
            elif TEXTURES[kind] == "ring":
                tex[idx] = np.where(np.abs(d[idx] - 0.6 * border[idx]) < 0.17, 0.9, -0.3)
            else:  # speckle: smooth blotches
                tex[idx] = np.tanh(1.5 * _upsample(speckle[sl][idx], size))
        c = contrast[sl, None, None, None]
        sk = skin[sl, None, None, :]
        col = sk + c * (lesion[sl, None, None, :] - sk)
        col = col * (1.0 + 0.35 * c * tex[..., None])
        img = sk + alpha[..., None] * (col - sk)
        inked = np.flatnonzero(marker[sl])
        if len(inked):  # an ink stroke at radius ~0.72 around the centre (marked images only)
            ang = marker_angle[sl][inked][:, None, None]
            tilt = marker_tilt[sl][inked][:, None, None]
            mx, my = 0.72 * np.cos(ang), 0.72 * np.sin(ang)
            tx, ty = -np.sin(ang + tilt), np.cos(ang + tilt)
            rx, ry = xx - mx, yy - my
            along = np.clip(rx * tx + ry * ty, -0.22, 0.22)
            dist = np.hypot(rx - along * tx, ry - along * ty)
            ink = np.clip((0.07 - dist) / edge + 0.5, 0.0, 1.0)
            img[inked] += ink[..., None] * (np.array([96, 48, 140], np.float32) - img[inked])
        shade = 1.0 + light_dir[sl, 0, None, None] * xx + light_dir[sl, 1, None, None] * yy
        img *= shade[..., None]
        pores = (_pore_noise(pore_seed, sl, img.shape[1:3]) if picked is None
                 else _pore_noise_rows(pore_seed, sl, img.shape[1:3]))
        img += pores[..., None]
        out[dest] = np.clip(img, 0, 255).astype(np.uint8)
        if masks_out is not None:
            masks_out[dest] = (d < border).astype(np.uint8)
        if progress is not None:
            progress(m)


def _check(p: SynthDermParams) -> None:
    if p.n_samples < 10 * p.n_classes:
        raise ParamError(
            f"n_samples={p.n_samples} is too small for {p.n_classes} classes; use at least "
            f"{10 * p.n_classes}"
        )
    total = p.n_samples + p.n_val + p.n_test  # bounded before anything is allocated
    if total > MAX_IMAGES:
        raise ParamError(
            f"synthderm would generate {total} images: at most {MAX_IMAGES:,} (at 32 px their "
            f"cache alone would take {human_bytes(total * 32 * 32 * 3)}); lower n_samples, "
            "n_val or n_test")


SynthDermParams.validate = _check  # type: ignore[attr-defined]
