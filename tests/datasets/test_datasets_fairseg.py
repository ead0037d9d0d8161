"""The fairseg adapter (Harvard-FairSeg) on generated npz files in the release's layout:
``Training/data_00001.npz`` ... and ``Test/...``, keys ``slo_fundus`` (uint8 H×W),
``disc_cup_mask`` (int8, 0 background, -1 rim, -2 cup) and the six attribute scalars as 0-d
arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import assert_cli_error, cli

from fairbench import DataError, create_dataset, get_dataset_class
from fairbench.data.cache import load_or_build
from fairbench.data.splits import check_split, make_split


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test its own default cache folder (the header cache lives there)."""
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "default-cache"))


H, W = 48, 64  # non-square, as a test of the centre crop (the release's images are 200×200)
R_DISC, R_CUP = 10.0, 5.0


def disc_centre(i: int) -> tuple[int, int]:
    """A different disc position per file (row, column), inside the central 48×48 square."""
    return 14 + (i * 7) % 20, 18 + (i * 11) % 26


def draw(i: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, mask int8 {0, -1, -2}): a bright disc with a brighter cup on a dark
    background with a faint horizontal gradient."""
    cy, cx = disc_centre(i)
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
    mask = np.where(d < R_CUP, -2, np.where(d < R_DISC, -1, 0)).astype(np.int8)
    img = np.where(mask == -2, 230, np.where(mask == -1, 160, 40)).astype(np.int16)
    img = (img + (xx * 10) // w).astype(np.uint8)
    return img, mask


def save_npz(path: Path, i: int = 1, *, compressed: bool = False, object_scalars: bool = False,
             drop: tuple[str, ...] = (), image: np.ndarray | None = None,
             mask: np.ndarray | None = None, **attrs) -> Path:
    img, m = draw(i)
    values = {"age": 70.0, "gender": 0, "race": 0, "ethnicity": 0, "language": 0,
              "maritalstatus": 0}
    values.update(attrs)
    arrays = {"slo_fundus": img if image is None else image,
              "disc_cup_mask": m if mask is None else mask}
    for key, value in values.items():
        arrays[key] = np.array(value, dtype=object) if object_scalars else np.array(value)
    for key in drop:
        arrays.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


#: the attributes of the fixture files 1..10 (race, gender, ethnicity, language, marital, age)
ROWS = [
    (0, 0, 0, 0, 0, 45.0),              # years
    (1, 1, 1, 1, 1, 60.0),              # exactly 60 years: >=60
    (2, 0, -1, 2, 2, 59.9),             # unknown ethnicity
    (-1, 1, 0, -1, 3, 60 * 365.25),     # days, exactly 60 years; unknown race, language
    (0, 0, 1, 0, 4, 21900.0),           # days: 59.96 years
    (1, 1, 0, 1, -1, -1),               # unknown marital status and age
    (2, 0, 0, 2, 0, 80.0 * 365.25),     # days
    (0, 1, 1, 0, 1, 30.0),
    (1, 0, 0, 1, 2, 25000.0),           # days: 68 years
    (2, 1, 1, 2, 3, float("nan")),      # NaN age: missing
]
KEYS = ("race", "gender", "ethnicity", "language", "maritalstatus", "age")


def make_root(tmp_path: Path, n: int = 10, rows=ROWS, name: str = "fairseg") -> Path:
    """Files 1..n (n*0.8 in Training/, the rest in Test/), written in shuffled order; odd files
    compressed, every third with 0-d object scalars (as the release stores them)."""
    root = tmp_path / name
    order = np.random.default_rng(1).permutation(n) + 1
    for i in order:
        sub = "Training" if i <= 0.8 * n else "Test"
        row = rows[(i - 1) % len(rows)]
        save_npz(root / sub / f"data_{i:05d}.npz", int(i), compressed=bool(i % 2),
                 object_scalars=i % 3 == 0, **dict(zip(KEYS, row)))
    return root


# -- the table ------------------------------------------------------------------------------
def _counting_reads(monkeypatch) -> list[str]:
    import fairbench.datasets.fairseg as F

    opened: list[str] = []
    real = F.read_header

    def spy(path, rel):
        opened.append(Path(path).name)
        return real(path, rel)

    monkeypatch.setattr(F, "read_header", spy)
    return opened


def test_header_cache_opens_only_new_or_changed_files(tmp_path, monkeypatch):
    import os

    root = make_root(tmp_path)
    opened = _counting_reads(monkeypatch)
    first = create_dataset("fairseg", root).build_table()
    assert len(opened) == 10
    cached = list((tmp_path / "default-cache" / "tables").glob("fairseg-*.json"))
    assert len(cached) == 1
    opened.clear()
    again = create_dataset("fairseg", root).build_table()
    assert opened == []  # nothing re-read
    assert again.df.equals(first.df)  # same codes, same ages (NaN and days included)
    assert create_dataset("fairseg", root, age_threshold=50).build_table().attr(
        "age").tolist() == [0, 1, 1, 1, 1, -1, 1, 0, 1, -1]  # the threshold applies afterwards
    # a changed file (same size: only its stamp tells) and a new one are read, the rest not
    changed = root / "Training" / "data_00002.npz"
    stat = changed.stat()
    save_npz(changed, 2, compressed=False, **dict(zip(KEYS, (0, 1, 1, 1, 1, 60.0))))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    save_npz(root / "Test" / "data_00011.npz", 11)
    opened.clear()
    t = create_dataset("fairseg", root).build_table()
    assert sorted(opened) == ["data_00002.npz", "data_00011.npz"]
    assert t.attr("race").tolist()[1] == 0 and len(t) == 11
    # a damaged cache file is ignored (the files are read again) and rewritten
    cached[0].write_text("{not json")
    opened.clear()
    create_dataset("fairseg", root).build_table()
    assert len(opened) == 11
    opened.clear()
    create_dataset("fairseg", root).build_table()
    assert opened == []


def test_header_cache_follows_the_cache_dir_and_survives_a_read_only_one(tmp_path,
                                                                         monkeypatch):
    root = make_root(tmp_path, n=3)
    ds = create_dataset("fairseg", root)
    ds.cache_dir = tmp_path / "run-cache"
    ds.build_table()
    assert list((tmp_path / "run-cache" / "tables").glob("fairseg-*.json"))
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder would be")
    ds = create_dataset("fairseg", root)
    ds.cache_dir = blocked
    assert len(ds.build_table()) == 3  # no cache written, no error


def test_table_ids_attributes_and_ages(tmp_path):
    root = make_root(tmp_path)
    ds = create_dataset("fairseg", root)
    cls = get_dataset_class("fairseg")
    assert cls.tasks == ("segmentation",) and cls.default_image_size == 64
    assert cls.default_backbone == "unet:tu-resnet10t" and cls.requires_data_root
    t = ds.build_table()
    assert list(t.sample_ids) == [f"data_{i:05d}" for i in range(1, 11)]
    assert t.df.path.tolist() == [f"Training/data_{i:05d}.npz" for i in range(1, 9)] + [
        "Test/data_00009.npz", "Test/data_00010.npz"]
    assert (t.patient_ids == t.sample_ids.astype(str)).all()
    assert t.classes == ["fundus"] and (t.labels == 0).all() and t.task == "segmentation"
    assert t.has_masks and t.mask_classes == ["background", "rim", "cup"]
    assert t.default_attribute == "race"
    assert t.attributes == {
        "race": ["Asian", "Black", "White"],
        "gender": ["Female", "Male"],
        "ethnicity": ["Non-Hispanic", "Hispanic"],
        "language": ["English", "Spanish", "Others"],
        "maritalstatus": ["Married or Partnered", "Single", "Divorced", "Widowed",
                          "Legally Separated"],
        "age": ["<60", ">=60"],
    }
    for k, key in enumerate(KEYS[:5]):
        assert t.attr(key).tolist() == [r[k] for r in ROWS], key
    # years: 45 <, 60 >=, 59.9 <; days: 60*365.25 >=, 21900 (59.96 y) <; -1 and NaN missing
    assert t.attr("age").tolist() == [0, 1, 0, 1, 0, -1, 1, 0, 1, -1]
    assert any("age read as days in 4 of 10 files" in n for n in ds.notes)
    # another threshold; max_files takes the first files by name
    t50 = create_dataset("fairseg", root, age_threshold=50, max_files=4).build_table()
    assert list(t50.sample_ids) == [f"data_{i:05d}" for i in range(1, 5)]
    assert t50.attributes["age"] == ["<50", ">=50"]
    assert t50.attr("age").tolist() == [0, 1, 1, 1]


def test_table_reads_no_pixels_and_matches_np_load(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    import fairbench.datasets.fairseg as F

    arrays = []
    original = F._NpzMembers.array

    def spy(self, key):
        arrays.append(key)
        return original(self, key)

    monkeypatch.setattr(F._NpzMembers, "array", spy)
    t = create_dataset("fairseg", root).build_table()
    # the image and mask are only peeked at (their .npy headers), never loaded as arrays
    assert arrays and not {"slo_fundus", "disc_cup_mask"} & set(arrays)
    # the member reader agrees with np.load(allow_pickle=True)[key].item()
    for rel, race in zip(t.df.path, t.attr("race")):
        with np.load(root / rel, allow_pickle=True) as z:
            assert int(z["race"].item()) == race


def test_split_on_table(tmp_path):
    rows = [(i % 3, i % 2, i % 2, i % 3, i % 5, 40 + i) for i in range(40)]
    root = make_root(tmp_path, n=40, rows=rows)
    t = create_dataset("fairseg", root).build_table()
    split = make_split(t, seed=0)
    check_split(split, t, "race")
    assert sum(split.sizes().values()) == 40


# -- pixels ---------------------------------------------------------------------------------
def _expected_mask(i: int, size: int) -> np.ndarray:
    """The nearest-neighbour sample of the drawn mask at each output pixel's centre, mapped
    back through the centre crop (the shorter side, H, is kept; (W - H) / 2 columns are cut
    on each side)."""
    _, m = draw(i)
    side = min(H, W)
    left, top = (W - side) / 2, (H - side) / 2
    c = (np.arange(size) + 0.5) * side / size
    rows = np.floor(top + c).astype(int)
    cols = np.floor(left + c).astype(int)
    return -m[np.ix_(rows, cols)]


def test_fill_images_through_cache(tmp_path):
    root = make_root(tmp_path)
    ds = create_dataset("fairseg", root)
    t = ds.build_table()
    size = 24
    cached = load_or_build(ds, t, size, tmp_path / "cache", progress=False)
    assert cached.images.shape == (10, size, size, 3) and cached.images.dtype == np.uint8
    assert cached.masks is not None and cached.masks.shape == (10, size, size)
    assert cached.masks.dtype == np.uint8
    img = np.asarray(cached.images)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert set(np.unique(cached.masks).tolist()) == {0, 1, 2}
    scale = size / min(H, W)
    left = (W - min(H, W)) / 2
    for row, sid in enumerate(cached.sample_ids):
        i = int(sid.split("_")[1])
        mask = np.asarray(cached.masks[row])
        # the mask is the drawn one, centre-cropped: exactly what nearest sampling gives
        np.testing.assert_array_equal(mask, _expected_mask(i, size))
        # and the image is aligned with it: the disc centre is cup and bright, a corner dark
        cy, cx = disc_centre(i)
        r, c = int(cy * scale), int((cx - left) * scale)
        assert mask[r, c] == 2 and img[row, r, c, 0] > 200, (sid, r, c)
        assert mask[0, 0] == 0 and img[row, 0, 0, 0] < 60
        assert img[row][mask == 1, 0].mean() > img[row][mask == 0, 0].mean() + 80


def test_fill_accepts_channels_float_and_mapped_masks(tmp_path):
    root = tmp_path / "v"
    img, m = draw(1)
    save_npz(root / "data_00001.npz", 1, image=img[..., None])              # H×W×1
    save_npz(root / "data_00002.npz", 1, image=np.repeat(img[..., None], 3, 2))  # H×W×3
    save_npz(root / "data_00003.npz", 1, image=img.astype(np.float32) / 255,  # float [0, 1]
             mask=(-m).astype(np.uint8))                                   # already {0,1,2}
    ds = create_dataset("fairseg", root)
    t = ds.build_table()
    cached = load_or_build(ds, t, 16, tmp_path / "cache", progress=False)
    for row in range(3):
        np.testing.assert_array_equal(cached.masks[row], _expected_mask(1, 16))
        assert np.abs(cached.images[row].astype(int) - cached.images[0].astype(int)).max() <= 1


def test_empty_masks_are_kept_and_counted_once(tmp_path, caplog):
    root = make_root(tmp_path, n=4)
    for i in (2, 3):
        save_npz(root / "Training" / f"data_{i:05d}.npz", i, mask=np.zeros((H, W), np.int8))
    ds = create_dataset("fairseg", root)
    t = ds.build_table()
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        cached = load_or_build(ds, t, 16, tmp_path / "cache", progress=False)
    assert len(t) == 4 and cached.masks[1].max() == 0 and cached.masks[0].max() == 2
    warnings = [r for r in caplog.records if "all background" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 of 4 masks" in warnings[0].getMessage() and "known for some downloads" in warnings[0].getMessage()
    assert ds.empty_masks == [str(root / "Training" / f"data_{i:05d}.npz") for i in (2, 3)]


# -- errors ---------------------------------------------------------------------------------
def _table_error(root: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as err:
        create_dataset("fairseg", root).build_table()
    msg = str(err.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def _fill_error(tmp_path: Path, root: Path, *fragments: str) -> str:
    ds = create_dataset("fairseg", root)
    t = ds.build_table()
    with pytest.raises(DataError) as err:
        load_or_build(ds, t, 16, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert not list((tmp_path / "cache" / "images").glob("fairseg-*"))  # no partial entry
    return msg


def test_error_no_files(tmp_path):
    (tmp_path / "empty" / "Training").mkdir(parents=True)
    (tmp_path / "empty" / "Training" / "data_00001.npy").write_bytes(b"")  # not .npz
    _table_error(tmp_path / "empty", "no data_*.npz files found", str(tmp_path / "empty"),
                 "--data-root")


def test_error_missing_keys(tmp_path):
    root = tmp_path / "r"
    save_npz(root / "data_00001.npz", drop=("disc_cup_mask",))
    _table_error(root, "data_00001.npz", "lacks the key 'disc_cup_mask'", "'slo_fundus'",
                 "it has [")
    save_npz(root / "data_00001.npz", drop=("race", "age"))
    _table_error(root, "lacks the keys 'race', 'age'")
    # FairMedFM's re-export: other key names
    root2 = tmp_path / "fmfm"
    root2.mkdir()
    img, m = draw(1)
    np.savez(root2 / "data_000001.npz", fundus=img, disc_cup_borders=m, race=np.array(0))
    _table_error(root2, "'slo_fundus'", "'disc_cup_mask'", "FairMedFM")


def test_error_mask_shape(tmp_path):
    root = tmp_path / "r"
    save_npz(root / "Test" / "data_00001.npz", mask=np.zeros((H, W - 4), np.int8))
    _table_error(root, "Test/data_00001.npz", "disc_cup_mask has shape (48, 60)",
                 "slo_fundus has shape (48, 64)")
    save_npz(root / "Test" / "data_00001.npz", image=np.zeros((3, H, W), np.uint8),
             mask=np.zeros((3, H, W), np.int8))
    _table_error(root, "slo_fundus has shape (3, 48, 64)", "grayscale")


def test_error_mask_values(tmp_path):
    root = make_root(tmp_path, n=3)
    _, m = draw(2)
    m[0, 0] = 3
    m[1, 1] = -5
    save_npz(root / "Training" / "data_00002.npz", 2, mask=m)
    _fill_error(tmp_path, root, "data_00002.npz", "disc_cup_mask has values outside",
                "-5, 3")


def test_error_attribute_values(tmp_path):
    root = make_root(tmp_path, n=3)
    save_npz(root / "Training" / "data_00002.npz", 2, race=7)
    _table_error(root, "data_00002.npz", "race = 7", "out of range",
                 "0 (Asian), 1 (Black), 2 (White), -1 (unknown)")
    save_npz(root / "Training" / "data_00002.npz", 2, gender=0.5, object_scalars=True)
    _table_error(root, "gender = 0.5", "0 (Female), 1 (Male)")
    save_npz(root / "Training" / "data_00002.npz", 2, maritalstatus="married",
             object_scalars=True)
    _table_error(root, "maritalstatus = 'married' is not a number", "4 (Legally Separated)")
    save_npz(root / "Training" / "data_00002.npz", 2, race=np.array([0, 1]))
    _table_error(root, "race should be one value", "(2,)")


def test_error_corrupt_files(tmp_path):
    root = make_root(tmp_path, n=3)
    bad = root / "Training" / "data_00002.npz"
    bad.write_bytes(b"this is not a zip file")
    _table_error(root, str(bad), "is not a readable .npz file", "download it again")
    # truncated: the zip directory at the end is gone
    save_npz(bad, 2)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _table_error(root, str(bad), "is not a readable .npz file")
    # a damaged image member: zipfile's CRC check finds it, when the table peeks at the
    # member's header (a small member is read whole) or at the latest when the cache is built
    save_npz(bad, 2)
    data = bytearray(bad.read_bytes())
    pos = data.index(b"slo_fundus.npy") + 400  # inside the stored image bytes
    data[pos:pos + 50] = b"\xff" * 50
    bad.write_bytes(bytes(data))
    ds = create_dataset("fairseg", root)
    with pytest.raises(DataError) as err:
        load_or_build(ds, ds.build_table(), 16, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "CRC" in msg, msg
    assert not list((tmp_path / "cache" / "images").glob("fairseg-*"))  # no partial entry


def test_error_duplicate_names(tmp_path):
    root = make_root(tmp_path, n=2)
    save_npz(root / "Test" / "data_00001.npz")
    _table_error(root, "'data_00001.npz' occurs twice", "Test/data_00001.npz",
                 "Training/data_00001.npz")


# -- command line ---------------------------------------------------------------------------
def test_cli(tmp_path):
    res = cli("list", "datasets")
    assert res.exit_code == 0 and "fairseg" in res.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = str(tmp_path / "cache")
    assert_cli_error(cli("run", "--dataset", "fairseg", "--data-root", str(empty),
                         "--runs-dir", str(tmp_path / "runs"), "--cache-dir", cache),
                     "no data_*.npz files found")
    assert_cli_error(cli("data", "info", "fairseg", "--data-root", str(empty)),
                     "no data_*.npz files found")
    assert_cli_error(cli("data", "info", "fairseg"), "needs --data-root")
    root = make_root(tmp_path, n=4)
    save_npz(root / "Training" / "data_00002.npz", 2, race=7)
    assert_cli_error(cli("data", "info", "fairseg", "--data-root", str(root)), "race = 7")
    save_npz(root / "Training" / "data_00002.npz", 2, **dict(zip(KEYS, ROWS[1])))
    res = cli("data", "prepare", "fairseg", "--data-root", str(root), "--image-size", "16",
              "--cache-dir", cache, "-q", "--attribute", "age")
    assert res.exit_code == 0, res.output
    assert "4 samples, 1 classes" in res.stdout
    assert "note: age read as days in 1 of 4 files" in res.stdout
    assert "attribute race (default): Asian 1, Black 1, White 1, missing 1" in res.stdout


def test_segmentation_run_end_to_end_with_rim_and_cup(tmp_path):
    """A 3-class (background, rim, cup) run through the CLI: per-structure Dice in the
    metrics, the predictions and the printed table."""
    import json

    import pandas as pd

    rows = [(i % 3, i % 2, i % 2, i % 3, i % 5, 40 + i) for i in range(60)]
    root = make_root(tmp_path, n=60, rows=rows)
    runs = tmp_path / "runs"
    res = cli("run", "--dataset", "fairseg", "--data-root", str(root), "--attribute", "gender",
              "--image-size", "16", "--backbone-param", "decoder_width=16", "--train",
              "epochs=1", "--train", "batch_size=8", "--runs-dir", str(runs), "--cache-dir",
              str(tmp_path / "cache"), "-q")
    assert res.exit_code == 0, res.output
    assert "Dice_rim" in res.stdout and "Dice_cup" in res.stdout and "ES_fairseg" in res.stdout
    run_dir = next(runs.glob("fairseg/vanilla/*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["meta"]["mask_classes"] == ["background", "rim", "cup"]
    assert test["Dice"] == pytest.approx((test["Dice_rim"] + test["Dice_cup"]) / 2)
    for group in ("Female", "Male"):
        assert {"Dice_rim", "IoU_cup"} <= set(test[group])
    preds = pd.read_csv(run_dir / "predictions.csv")
    assert {"Dice_rim", "Dice_cup", "IoU_rim", "IoU_cup"} <= set(preds.columns)
    # a classification-only method on this dataset is one clear line
    res = cli("run", "--dataset", "fairseg", "--data-root", str(root), "--method",
              "fairprune", "--runs-dir", str(runs))
    assert res.exit_code == 2 and "does not support segmentation" in res.output
