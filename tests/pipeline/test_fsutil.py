import os

import pytest

from pipeline.fsutil import atomic_path, atomic_write_text, remove_stale_temps


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["x.json"]
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # readable like any file, not mkstemp's 0600


def test_a_crash_mid_write_keeps_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "ckpt.pt"
    atomic_write_text(p, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "good"
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / ".tmp-shard.123").write_text("partial")
    (tmp_path / "keep.f16").write_text("whole")
    assert remove_stale_temps(tmp_path) == 1
    assert os.listdir(tmp_path) == ["keep.f16"]
