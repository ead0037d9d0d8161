"""Splits: stratified by label × group, grouped by patient, hashed, saved and loaded, checked."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pandas as pd
import pytest

from fairbench import DataError, SampleTable, create_dataset
from fairbench.data.splits import (
    PARTS,
    check_split,
    from_parts,
    load_split,
    make_split,
    save_split,
)


def _table(n: int = 600, seed: int = 0, patients: bool = False) -> SampleTable:
    rng = np.random.default_rng(seed)
    label = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    group = (rng.random(n) < 0.3).astype(int)
    df = pd.DataFrame({"sample_id": [f"s{i:05d}" for i in range(n)], "path": "",
                       "label": label, "attr_tone": group,
                       "attr_sex": rng.integers(0, 2, n)})
    if patients:
        df["patient_id"] = [f"p{i // 3}" for i in range(n)]
        # a patient's images share the group (as real data do)
        df["attr_tone"] = df.groupby("patient_id")["attr_tone"].transform("first")
    return SampleTable(df, classes=["a", "b", "c"],
                       attributes={"tone": ["light", "dark"], "sex": ["f", "m"]})


def _stratum_counts(table: SampleTable, split, part: str) -> pd.Series:
    pos = split.positions(table, part)
    return pd.Series(list(zip(table.labels[pos], table.attr("tone")[pos]))).value_counts()


def test_stratified_by_label_and_group():
    table = _table()
    split = make_split(table, seed=3, fractions=(0.6, 0.2, 0.2))
    total = pd.Series(list(zip(table.labels, table.attr("tone")))).value_counts()
    assert len(total) == 6
    for part, frac in zip(PARTS, (0.6, 0.2, 0.2)):
        counts = _stratum_counts(table, split, part)
        for stratum, n in total.items():
            # largest-remainder rounding: within one sample of the exact share per stratum
            assert abs(counts.get(stratum, 0) - frac * n) <= 1, (part, stratum)
    assert sum(split.sizes().values()) == len(table)
    all_ids = np.concatenate([split.parts[p] for p in PARTS])
    assert len(set(all_ids)) == len(table)


def test_stratified_on_the_chosen_attribute():
    table = _table(seed=1)
    split = make_split(table, seed=0, stratify_attribute="sex")
    sex = table.attr("sex")
    for part, frac in zip(PARTS, (0.6, 0.2, 0.2)):
        pos = split.positions(table, part)
        for lab in range(3):
            for s in (0, 1):
                n = int(((table.labels == lab) & (sex == s)).sum())
                got = int(((table.labels[pos] == lab) & (sex[pos] == s)).sum())
                assert abs(got - frac * n) <= 1


def test_patients_never_in_two_parts_and_strata_stay_close():
    table = _table(n=900, patients=True)
    split = make_split(table, seed=0)
    patient = dict(zip(table.sample_ids, table.patient_ids))
    owner: dict[str, str] = {}
    for part in PARTS:
        for sid in split.parts[part]:
            p = patient[sid]
            assert owner.setdefault(p, part) == part, f"patient {p} in two parts"
    sizes = split.sizes()
    assert abs(sizes["train"] / len(table) - 0.6) < 0.05
    assert abs(sizes["test"] / len(table) - 0.2) < 0.05
    # both groups in every part, in proportions close to the whole
    whole = table.attr("tone").mean()
    for part in PARTS:
        share = table.attr("tone")[split.positions(table, part)].mean()
        assert abs(share - whole) < 0.06


def test_synthderm_patients_grouped():
    ds = create_dataset("synthderm", n_samples=400, images_per_patient=2.5)
    table = ds.build_table()
    assert table.patient_ids is not None
    assert len(set(table.patient_ids)) < 0.7 * len(table)  # there are multi-image patients
    split = make_split(table, seed=1)
    part_of = {sid: part for part in PARTS for sid in split.parts[part]}
    by_patient = pd.DataFrame({"patient": table.patient_ids,
                               "part": [part_of[s] for s in table.sample_ids]})
    assert (by_patient.groupby("patient")["part"].nunique() == 1).all()


def test_same_seed_same_split_and_hash_identifies_content(tmp_path):
    table = _table()
    a, b = make_split(table, seed=4), make_split(table, seed=4)
    c = make_split(table, seed=5)
    assert a.sha256 == b.sha256
    assert all(np.array_equal(a.parts[p], b.parts[p]) for p in PARTS)
    assert c.sha256 != a.sha256
    # moving one sample changes the hash
    parts = {p: list(a.parts[p]) for p in PARTS}
    parts["val"].append(parts["train"].pop())
    assert from_parts(parts).sha256 != a.sha256
    # the hash is the sha256 of the saved file
    path = save_split(a, tmp_path / "deep" / "split.csv")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == a.sha256
    assert not list(path.parent.glob(".*tmp"))
    # saving the same split again leaves the file alone (read-only works, no rewrite)
    os.utime(path, (1_000_000, 1_000_000))
    path.chmod(0o444)
    assert save_split(a, path) == path and path.stat().st_mtime == 1_000_000
    path.chmod(0o644)
    # another split under that name replaces it
    save_split(c, path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == c.sha256


def test_load_round_trip_aliases_and_row_order(tmp_path):
    table = _table()
    split = make_split(table, seed=2)
    path = save_split(split, tmp_path / "s.csv")
    loaded = load_split(path)
    assert loaded.sha256 == split.sha256
    assert all(np.array_equal(loaded.parts[p], split.parts[p]) for p in PARTS)
    # a user's file: shuffled rows, other id column name, part aliases, whitespace
    df = pd.read_csv(path, dtype=str).sample(frac=1.0, random_state=0)
    df["part"] = df["part"].map({"train": "Training", "val": "valid", "test": " test "})
    df = df.rename(columns={"sample_id": "image"})
    user = tmp_path / "user.csv"
    df.to_csv(user, index=False)
    assert load_split(user).sha256 == split.sha256
    df["part"] = df["part"].replace({"valid": "validation"})
    df.to_csv(user, index=False)
    assert load_split(user).sha256 == split.sha256


@pytest.mark.parametrize("content,fragment", [
    ("sample_id,part\na,train\nb,holdout\n", "unknown part"),
    ("sample_id,part\na,train\na,test\n", "twice"),
    ("id_x,where\na,train\n", "needs the columns"),
])
def test_bad_split_files(tmp_path, content, fragment):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(DataError, match=fragment):
        load_split(f)
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "missing.csv")


def test_check_split_rejects_part_missing_a_group(tmp_path):
    table = _table()
    split = make_split(table, seed=0)
    check_split(split, table, "tone")  # the generated one is fine
    # move every dark sample out of val into train
    dark = set(table.sample_ids[table.attr("tone") == 1])
    parts = {p: list(split.parts[p]) for p in PARTS}
    parts["train"] += [s for s in parts["val"] if s in dark]
    parts["val"] = [s for s in parts["val"] if s not in dark]
    bad = load_split(save_split(from_parts(parts), tmp_path / "user.csv"))
    with pytest.raises(DataError) as exc:
        check_split(bad, table, "tone")
    msg = str(exc.value)
    assert "val" in msg and "dark" in msg and "tone" in msg and "\n" not in msg
    # unknown ids and overlaps are refused as well
    parts2 = {p: list(split.parts[p]) for p in PARTS}
    parts2["test"].append("not-a-sample")
    with pytest.raises(DataError, match="not-a-sample"):
        check_split(from_parts(parts2), table, "tone")
    parts3 = {p: list(split.parts[p]) for p in PARTS}
    parts3["test"].append(parts3["train"][0])
    with pytest.raises(DataError, match="two parts"):
        check_split(from_parts(parts3), table, "tone")


def test_bad_fractions():
    with pytest.raises(DataError, match="fractions"):
        make_split(_table(), fractions=(0.5, 0.2, 0.2))


def test_run_seed_does_not_change_split(tmp_path, make_tiny_config):
    import torch

    from fairbench.run.runner import load_data, prepare

    runs = tmp_path / "runs"
    hashes = {}
    for seed, split_seed in ((0, 0), (3, 0), (0, 1)):
        cfg = make_tiny_config("vanilla", runs, seed=seed)
        cfg = dataclasses.replace(cfg, split_seed=split_seed)
        bundle = load_data(prepare(cfg), torch.device("cpu"), runs)
        hashes[(seed, split_seed)] = bundle.split.sha256
        # the split file saved under the runs dir has the recorded hash
        assert hashlib.sha256(bundle.split_file.read_bytes()).hexdigest() == bundle.split.sha256
    assert hashes[(0, 0)] == hashes[(3, 0)]
    assert hashes[(0, 1)] != hashes[(0, 0)]


def test_user_split_file_missing_group_fails_in_run(tmp_path, make_tiny_config):
    import torch

    from fairbench.run.runner import load_data, prepare

    cfg = make_tiny_config("vanilla", tmp_path / "runs")
    table = prepare(cfg).adapter.build_table()
    split = make_split(table, seed=0)
    dark = set(table.sample_ids[table.attr("skin_tone") == 1])
    parts = {p: list(split.parts[p]) for p in PARTS}
    parts["train"] += [s for s in parts["test"] if s in dark]
    parts["test"] = [s for s in parts["test"] if s not in dark]
    user = save_split(from_parts(parts), tmp_path / "user_split.csv")
    cfg = dataclasses.replace(cfg, split_file=str(user))
    with pytest.raises(DataError, match="test part has no sample of group.*dark"):
        load_data(prepare(cfg), torch.device("cpu"), tmp_path / "runs")
