"""``fairbench.core.files``: atomic, standard JSON and the removal of dead processes'
temporaries."""

from __future__ import annotations

import json
import os

from fairbench.core.files import remove_stale_temporaries, write_json


# -- atomic writes, crashes, reuse -------------------------------------------------------------
def test_write_json_atomic_and_standard(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": (1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None],
                                                            "c": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_remove_stale_temporaries(tmp_path):
    from fairbench.core.files import HOST, temporary_path

    final = tmp_path / "run"
    dead = tmp_path / f".run.tmp-{HOST}-99999999"
    live = tmp_path / f".run.tmp-{HOST}-{os.getppid()}"  # the parent process is alive
    legacy_dead = tmp_path / ".run.tmp-99999999"  # earlier versions wrote no host
    elsewhere = tmp_path / ".run.tmp-otherhost-99999999"  # maybe alive on its own machine
    other = tmp_path / f".other.tmp-{HOST}-99999999"
    for d in (dead, live, legacy_dead, elsewhere, other):
        d.mkdir()
    remove_stale_temporaries(final)
    assert not dead.exists() and not legacy_dead.exists()
    assert live.exists() and elsewhere.exists() and other.exists()
    assert temporary_path(final).name == f".run.tmp-{HOST}-{os.getpid()}"
