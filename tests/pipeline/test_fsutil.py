import os

import pytest

import subprocess

from pipeline.fsutil import TMP_PREFIX, atomic_path, atomic_write_text, owner_tag, remove_dead_temps


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


def test_a_dead_writers_temps_are_removed_anywhere_below_and_a_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid no longer exists
    host = owner_tag().split("@")[1]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / f"{TMP_PREFIX}g.pt@{host}@{dead.pid}@x1").write_text("partial")
    (tmp_path / f"{TMP_PREFIX}state.pt@{host}@{dead.pid}@x2").write_text("partial")
    live = tmp_path / "checkpoints" / f"{TMP_PREFIX}g.pt{owner_tag()}x3"  # this process: still writing
    live.write_text("partial")
    (tmp_path / "keep.f16").write_text("whole")
    assert remove_dead_temps(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "keep.f16"]
    assert os.listdir(tmp_path / "checkpoints") == [live.name]
