"""What a hostile or careless user broke in `segment`, kept fixed (issue 12: items 3, 4, 6, 8, 11)."""

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main as cli_main
from pipeline.config import MelConfig, SegmentConfig
from pipeline.dataset import read_index
from pipeline.fsutil import TMP_PREFIX, owned_temp, remove_dead_temps
from pipeline.segment import _failure_key, _prepare_out, merge, process_file, segment, source_bytes
from pipeline.shard import Shard, shard_of

CFG = MelConfig()
SR = 8000  # small files: resampled to 22.05 kHz like any other


def _audio(seed: int, seconds: float = 5.5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.4, 0.4, int(seconds * SR)).astype(np.float32)


def _write_bytes_name(folder: Path, name: bytes, seed: int) -> None:
    # open() by bytes: the name need not be text in any encoding
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        sf.write(f, _audio(seed), SR, format="WAV", subtype="PCM_16")


# odd bytes a real disk holds: Latin-1 and CP1252 names, broken UTF-8, control characters,
# a newline, shell and JSON metacharacters, and valid non-ASCII UTF-8 for comparison
ODD_NAMES = [b"caf\xe9.wav", b"\xff\xfe.wav", b"na\xefve \x80\x81.wav", b"\xc3(.wav", b"tab\there.wav",
             b"new\nline.wav", b'quote"back\\slash.wav', b"%s{}$(x).wav", "d\u00e9j\u00e0-vu \U0001f3b5.wav".encode(),
             b"\xed\xa0\x80surrogate.wav"]


# ----------------------------------------------------------------------------- item 3: file names


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b))
@settings(max_examples=200, deadline=None)
def test_any_file_name_gets_a_shard_and_a_failure_key(name):
    source = os.fsdecode(name)  # how os.walk hands a name that is not UTF-8 to Python
    owners = [i for i in range(3) if Shard(i, 3).owns(source)]
    # exactly one shard, chosen by the name's bytes on disk (what every pod sees alike)
    assert owners == [int.from_bytes(hashlib.sha1(name).digest()[:8], "big") % 3]
    assert source_bytes(source) == name
    assert len(_failure_key(source)) == 16


@pytest.mark.slow
def test_file_names_that_are_not_utf8_do_not_stop_segment(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for seed, name in enumerate(ODD_NAMES):
        _write_bytes_name(src, name, seed)
    out = tmp_path / "out"
    assert cli_main(["segment", "--input", str(src), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"done {len(ODD_NAMES)}" in printed
    rows = read_index(out)
    # every name comes back byte for byte from the index: nothing renamed or lost
    assert sorted(source_bytes(r["source"]) for r in rows) == sorted(ODD_NAMES)
    assert json.loads((out / "report.json").read_text())["failed"] == {}
    # a bad file with an odd name is reported, printably, and forgotten once removed
    bad = os.path.join(os.fsencode(src), b"bro\xefken.mp3")
    with open(bad, "wb") as f:
        f.write(b"not audio at all" * 50)
    s = segment(src, out, CFG, SegmentConfig(workers=2), progress=False)
    assert list(s.failures) == [os.fsdecode(b"bro\xefken.mp3")]
    assert "bro\\xefken.mp3" in s.render()
    os.unlink(bad)
    segment(src, out, CFG, SegmentConfig(workers=2), progress=False)
    assert json.loads((out / "report.json").read_text())["failed"] == {}


# ----------------------------------------------------------------------------- item 4: shards and temps


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _tag_of(pid: int, host: str | None = None) -> str:
    import socket

    host = host or socket.gethostname()
    return f"@{host}@{pid}@"


def test_cleanup_removes_only_temps_whose_writer_is_gone(tmp_path):
    alive = _sleeper()
    dead = _sleeper()
    dead.kill()
    dead.wait()
    try:
        d = tmp_path / "shards"
        d.mkdir()
        keep = {
            "live writer here": f"{TMP_PREFIX}aa.f16{_tag_of(alive.pid)}",
            "this process": owned_temp(d, "bb.f16").name,
            "another pod, fresh": f"{TMP_PREFIX}cc.f16{_tag_of(dead.pid, 'technogan-segment-3-xk2p9')}",
            "no owner tag, fresh": f"{TMP_PREFIX}dd.json.k2j3h1",
        }
        gone = {
            "dead writer here": f"{TMP_PREFIX}ee.f16{_tag_of(dead.pid)}",
            "another pod, untouched for hours": f"{TMP_PREFIX}ff.f16{_tag_of(alive.pid, 'technogan-segment-1-a')}",
            "no owner tag, untouched for hours": f"{TMP_PREFIX}gg.json.8s7d6f",
        }
        for name in [*keep.values(), *gone.values()]:
            (d / name).write_bytes(b"partial")
        hours_ago = time.time() - 3 * 3600
        for what in ("another pod, untouched for hours", "no owner tag, untouched for hours"):
            os.utime(d / gone[what], (hours_ago, hours_ago))
        assert remove_dead_temps(d) == len(gone)
        assert sorted(p.name for p in d.iterdir()) == sorted(keep.values())
    finally:
        alive.kill()
        alive.wait()


def _names_for_shards(count: int, want: list[int], prefix: str) -> list[str]:
    names, i = [], 0
    for shard in want:
        while shard_of(f"{prefix}{i}.wav", count) != shard:
            i += 1
        names.append(f"{prefix}{i}.wav")
        i += 1
    return names


@pytest.mark.slow
def test_a_later_shard_never_deletes_a_running_shards_partial_files(tmp_path):
    """Two pods of an Indexed Job on one volume, the second starting while the first writes."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    long_name, short_name = _names_for_shards(2, [0, 1], "t")
    sf.write(src / long_name, np.random.default_rng(0).uniform(-0.4, 0.4, 120 * SR).astype(np.float32), SR)
    sf.write(src / short_name, _audio(1), SR)
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", "--input", str(src), "--out", str(out),
           "--shard", "0/2", "--workers", "1", "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "shards").glob(TMP_PREFIX + "*")) and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # hold it mid-file: its partial shard is on disk
        assert first.poll() is None, first.stdout.read().decode()
        held = set((out / "shards").glob(TMP_PREFIX + "*"))  # taken after the stop: it cannot rename them now
        assert held, "the first shard finished its file before it could be held"
        s = segment(src, out, CFG, SegmentConfig(workers=1), shard=Shard(1, 2), progress=False)
        assert s.by_status["done"] == 1
        assert held <= set((out / "shards").glob(TMP_PREFIX + "*")), "the running shard's partial file was deleted"
    finally:
        first.send_signal(signal.SIGCONT)
    text = first.communicate(timeout=300)[0].decode()
    assert first.returncode == 0, text
    assert "vanished" not in text
    report = merge(out)
    assert report["failed"] == {} and report["tracks"] == 2
    assert {r["source"] for r in read_index(out)} == {long_name, short_name}


# ----------------------------------------------------------------------------- item 6: duplicates


def _index_after(order: list[str], src: Path, out: Path) -> bytes:
    _prepare_out(out, CFG)
    for name in order:
        process_file(src / name, name, out, CFG, SegmentConfig(workers=1))
    merge(out)
    return (out / "index.jsonl").read_bytes()


@pytest.mark.slow
def test_which_name_of_one_audio_wins_does_not_depend_on_who_finishes_first(tmp_path):
    src = tmp_path / "in"
    (src / "z").mkdir(parents=True)
    names = ["b.wav", "a-copy.wav", "z/a.wav"]
    sf.write(src / names[0], _audio(0), SR)
    for n in names[1:]:
        (src / n).write_bytes((src / names[0]).read_bytes())
    indexes = {_index_after(list(order), src, tmp_path / f"out{i}")
               for i, order in enumerate(itertools.permutations(names))}
    assert len(indexes) == 1, "the index depends on the order files were processed in"
    rows = [json.loads(line) for line in indexes.pop().splitlines()]
    assert {r["source"] for r in rows} == {"a-copy.wav"}  # the first name in byte order
    report = json.loads((tmp_path / "out0" / "report.json").read_text())
    assert report["skipped"] == {"b.wav": "same audio as a-copy.wav", "z/a.wav": "same audio as a-copy.wav"}


@pytest.mark.slow
def test_duplicates_across_workers_give_one_answer_and_a_summary_that_agrees(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        sf.write(src / f"track{i}.wav", _audio(10 + i), SR)
        for copy in ("x", "y"):
            (src / f"{copy}-track{i}.wav").write_bytes((src / f"track{i}.wav").read_bytes())
    summaries, indexes = [], []
    for run in range(2):
        out = tmp_path / f"out{run}"
        s = segment(src, out, CFG, SegmentConfig(workers=2), progress=False)
        summaries.append((dict(s.by_status), s.new_clips, s.total_clips, s.total_tracks))
        indexes.append((out / "index.jsonl").read_bytes() + (out / "tracks.jsonl").read_bytes())
    assert indexes[0] == indexes[1]
    assert summaries[0] == summaries[1]
    by_status, new_clips, total_clips, tracks = summaries[0]
    assert by_status == {"done": 3, "duplicate": 6}
    assert new_clips == total_clips == 3 and tracks == 3
    assert {r["source"] for r in read_index(tmp_path / "out0")} == {"track0.wav", "track1.wav", "track2.wav"}


# ----------------------------------------------------------------------------- item 11: stale failures


def test_a_bad_file_removed_from_the_input_is_no_longer_reported(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sf.write(src / "good.wav", _audio(0), SR)
    (src / "bad.mp3").write_text("not audio\n" * 100)
    (src / "bad2.flac").write_bytes(b"\0" * 4000)
    s = segment(src, out, CFG, SegmentConfig(workers=1), progress=False)
    assert set(s.failures) == {"bad.mp3", "bad2.flac"}
    (src / "bad.mp3").unlink()
    s = segment(src, out, CFG, SegmentConfig(workers=1), progress=False)
    assert set(s.failures) == {"bad2.flac"}
    assert set(json.loads((out / "report.json").read_text())["failed"]) == {"bad2.flac"}
    # a sharded run forgets only names its own shard owns, then --merge agrees
    (src / "bad2.flac").unlink()
    owner = shard_of("bad2.flac", 2)
    segment(src, out, CFG, SegmentConfig(workers=1), shard=Shard(1 - owner, 2), progress=False)
    assert merge(out)["failed"] == {"bad2.flac": json.loads(next((out / "failures").glob("*.json")).read_text())["reason"]}
    segment(src, out, CFG, SegmentConfig(workers=1), shard=Shard(owner, 2), progress=False)
    assert merge(out)["failed"] == {}


# ----------------------------------------------------------------------------- item 8: clear errors


def test_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", _audio(0), SR)
    (tmp_path / "file").write_text("I am a file")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        assert cli_main(["segment", "--input", str(src), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "file") in err and "is a file" in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "I am a file"


@pytest.mark.parametrize("damage", ["garbage", "not an object", "missing keys", "binary"])
def test_a_damaged_part_record_names_the_file(tmp_path, damage, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sf.write(src / "a.wav", _audio(0), SR)
    segment(src, out, CFG, SegmentConfig(workers=1), progress=False)
    [part] = (out / "parts").glob("*.json")
    part.write_bytes({"garbage": b"{not json", "not an object": b"[1, 2]", "missing keys": b'{"source": "a.wav"}',
                      "binary": b"\xff\xfe\x00"}[damage])
    assert cli_main(["segment", "--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(part) in err and "Traceback" not in err


def _sigterm_is_default() -> bool:
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_segment_workers_end_on_sigterm_whatever_handler_the_caller_installed():
    """Pool.terminate() ends segment's workers with SIGTERM. A forked worker inherits the
    caller's handlers; a Python-level one never runs while the worker is blocked in C, and
    segment then waited forever for it (seen in CI after the scrape CLI had run in-process)."""
    from pipeline.segment import _worker_init

    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        with mp.get_context("fork").Pool(1, initializer=_worker_init) as pool:
            assert pool.apply(_sigterm_is_default) is True
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the caller's own stays
    finally:
        signal.signal(signal.SIGTERM, previous)
