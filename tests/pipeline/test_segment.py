import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import pytest

import pipeline.segment as segmod
from pipeline.cli import main as cli_main
from pipeline.config import MelConfig, SegmentConfig
from pipeline.dataset import read_index
from pipeline.errors import UserError
from pipeline.segment import merge, process_file, segment
from pipeline.shard import Shard
from tests.audio_utils import sine, write

CFG = MelConfig()
ONE = SegmentConfig(workers=1)


def noise(seconds, sr=22050, seed=0, amp=0.3, channels=1):
    rng = np.random.default_rng(seed)
    x = (amp * rng.standard_normal((int(seconds * sr), channels))).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def parts(out: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["source"]: json.loads(p.read_text()) for p in (out / "parts").glob("*.json")}


def test_exact_clip_counts_and_remainder_dropped(tmp_path):
    write(tmp_path / "in" / "a.wav", noise(23.0), 22050)
    write(tmp_path / "in" / "b.wav", noise(10.0, seed=1), 22050)
    s = segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    rows = read_index(tmp_path / "out")
    by_src = {src: [r for r in rows if r["source"] == src] for src in ("a.wav", "b.wav")}
    assert [r["clip"] for r in by_src["a.wav"]] == [0, 1, 2, 3]
    assert [r["start_s"] for r in by_src["a.wav"]] == [0.0, 5.0, 10.0, 15.0]
    assert len(by_src["b.wav"]) == 2
    assert s.new_clips == 6 and s.total_clips == 6
    shard = np.memmap(tmp_path / "out" / by_src["a.wav"][0]["shard"], dtype=np.float16, mode="r")
    assert shard.size == 4 * 128 * 216
    assert json.loads((tmp_path / "out" / "mel_config.json").read_text()) == CFG.to_dict()


def test_each_clips_peak_level_is_in_the_index(tmp_path):
    sr = 22050
    # 10 s at one level, then 10 s 12 dB quieter: the stored mels are alike, their peaks are not
    write(tmp_path / "in" / "steps.wav", np.concatenate([sine(440, 10, sr, amp=0.5), sine(440, 10, sr, amp=0.125)]), sr)
    segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    peaks = [r["peak_db"] for r in read_index(tmp_path / "out")]
    assert len(peaks) == 4
    assert peaks[0] == pytest.approx(peaks[1], abs=0.05) and peaks[2] == pytest.approx(peaks[3], abs=0.05)
    assert peaks[0] - peaks[2] == pytest.approx(12.04, abs=0.1)
    assert [r["peak_db"] for r in parts(tmp_path / "out")["steps.wav"]["rows"]] == peaks


def test_records_made_before_peaks_were_kept_are_redone(tmp_path):
    write(tmp_path / "in" / "a.wav", noise(12.0), 22050)
    write(tmp_path / "in" / "b.wav", noise(11.0, seed=1), 22050)
    segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    before = read_index(tmp_path / "out")
    shards = {p.name: p.read_bytes() for p in (tmp_path / "out" / "shards").iterdir()}
    # a.wav's record as an older version wrote it: no levels
    path = next(p for p in (tmp_path / "out" / "parts").glob("*.json") if json.loads(p.read_text())["source"] == "a.wav")
    old = json.loads(path.read_text())
    path.write_text(json.dumps({**old, "rows": [{k: v for k, v in r.items() if k != "peak_db"} for r in old["rows"]]}))
    s = segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    assert s.by_status["done"] == 1 and s.by_status["already"] == 1  # only the old record is redone
    assert read_index(tmp_path / "out") == before  # the same clips, levels included
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "shards").iterdir()} == shards


def test_silent_clips_are_skipped_and_counted(tmp_path):
    sr = 22050
    audio = np.concatenate([sine(440, 5, sr), np.zeros(5 * sr, np.float32), sine(440, 5, sr), sine(440, 2, sr)])
    write(tmp_path / "in" / "gappy.wav", audio, sr)
    write(tmp_path / "in" / "silent.wav", np.zeros(11 * sr, np.float32), sr)
    s = segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    rows = read_index(tmp_path / "out")
    assert [r["clip"] for r in rows if r["source"] == "gappy.wav"] == [0, 2]
    assert s.silent_clips == 1 + 2
    p = parts(tmp_path / "out")
    assert p["silent.wav"]["status"] == "skipped" and "silent" in p["silent.wav"]["reason"]
    assert "silent.wav" in json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]


def test_second_run_does_no_work_and_changes_nothing(tmp_path):
    for i in range(3):
        write(tmp_path / "in" / f"t{i}.wav", noise(11, seed=i), 22050)
    segment(tmp_path / "in", tmp_path / "out", CFG, SegmentConfig(workers=2), progress=False)
    before = (tmp_path / "out" / "index.jsonl").read_bytes()
    s = segment(tmp_path / "in", tmp_path / "out", CFG, SegmentConfig(workers=2), progress=False)
    assert s.by_status["already"] == 3 and s.new_clips == 0
    assert (tmp_path / "out" / "index.jsonl").read_bytes() == before


def test_same_audio_twice_is_stored_once(tmp_path):
    write(tmp_path / "in" / "a.wav", noise(10), 22050)
    (tmp_path / "in" / "copy").mkdir()
    (tmp_path / "in" / "copy" / "a-again.wav").write_bytes((tmp_path / "in" / "a.wav").read_bytes())
    s = segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    assert s.by_status["duplicate"] == 1
    assert len(read_index(tmp_path / "out")) == 2


def _dataset_bytes(out: Path) -> dict[str, bytes]:
    files = {"index.jsonl": (out / "index.jsonl").read_bytes(), "tracks.jsonl": (out / "tracks.jsonl").read_bytes()}
    files.update({f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").iterdir())})
    return files


def test_two_shards_merged_equal_one_unsharded_run(synth_audio_dir, tmp_path):
    seg = SegmentConfig(workers=2)
    segment(synth_audio_dir, tmp_path / "whole", CFG, seg, progress=False)
    for i in range(2):
        s = segment(synth_audio_dir, tmp_path / "sharded", CFG, seg, shard=Shard(i, 2), progress=False)
        assert 0 < s.files < 6  # each shard took a real slice
    assert not (tmp_path / "sharded" / "index.jsonl").exists()  # shards leave merging to --merge
    assert cli_main(["segment", "--merge", "--out", str(tmp_path / "sharded")]) == 0
    assert _dataset_bytes(tmp_path / "sharded") == _dataset_bytes(tmp_path / "whole")
    assert len(read_index(tmp_path / "whole")) == 36


def test_resume_after_kill_duplicates_nothing(tmp_path):
    src = tmp_path / "in"
    for i in range(16):
        write(src / f"t{i:02d}.wav", noise(20, seed=i, sr=44100, channels=2), 44100)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", "--input", str(src), "--out", str(out),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((out / "parts").glob("*.json"))) < 3:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_at_kill = len(list((out / "parts").glob("*.json")))
    assert 3 <= done_at_kill < 16, "the kill must land mid-run"
    assert not (out / "index.jsonl").exists()

    s = segment(src, out, CFG, SegmentConfig(workers=2), progress=False)
    assert s.by_status["already"] == done_at_kill
    assert s.by_status["done"] == 16 - done_at_kill
    assert not [p for p in out.rglob(".tmp-*")], "partial files must not survive"
    segment(src, tmp_path / "ref", CFG, SegmentConfig(workers=2), progress=False)
    assert _dataset_bytes(out) == _dataset_bytes(tmp_path / "ref")
    rows = read_index(out)
    assert len(rows) == len({(r["track_id"], r["clip"]) for r in rows}) == 16 * 4


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Good files next to every kind of bad input the issue lists."""
    d = tmp_path / "in"
    write(d / "good1.wav", noise(12, seed=1), 22050)
    write(d / "sub" / "good2.wav", noise(12, seed=2), 22050)
    (d / "empty.wav").write_bytes(b"")
    full = write(tmp_path / "full.wav", noise(24, seed=3), 22050).read_bytes()
    (d / "truncated.wav").write_bytes(full[: len(full) // 2])  # header still claims 24 s
    flac = write(tmp_path / "full.flac", noise(24, seed=6), 22050).read_bytes()
    (d / "truncated.flac").write_bytes(flac[: len(flac) // 2])  # STREAMINFO still claims 24 s
    (d / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "notes.mp3").write_text("these are my notes, not an mp3\n" * 100)
    write(d / "short.wav", noise(3.2, seed=4), 22050)
    write(d / "surround.wav", noise(12, sr=48000, seed=5, channels=6), 48000)
    write(d / "hires.wav", sine(1000, 11, sr=96000, channels=2), 96000, subtype="PCM_24")
    (d / "readme.txt").write_text("not audio and not an audio extension: ignored")
    return d


def test_bad_inputs_are_reported_and_never_stop_the_batch(messy_folder, tmp_path):
    out = tmp_path / "out"
    s = segment(messy_folder, out, CFG, SegmentConfig(workers=2), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert s.files == 10
    assert "empty" in report["failed"]["empty.wav"]
    assert "corrupt.flac" in report["failed"]
    assert "notes.mp3" in report["failed"]
    assert "too short" in report["skipped"]["short.wav"]
    for name in ("truncated.wav", "truncated.flac"):
        assert any("truncated: decoded 1" in w and "of 24.0 s" in w for w in report["warnings"][name]), name
    rows = read_index(out)
    count = {src: sum(r["source"] == src for r in rows) for src in {r["source"] for r in rows}}
    assert count == {"good1.wav": 2, "sub/good2.wav": 2, "surround.wav": 2, "hires.wav": 2, "truncated.wav": 2,
                     "truncated.flac": 2}
    p = parts(out)
    assert (p["surround.wav"]["channels"], p["surround.wav"]["sample_rate"]) == (6, 48000)
    assert p["hires.wav"]["sample_rate"] == 96000
    # the 96 kHz sine is resampled, not misread: it still peaks at 1 kHz's band
    from pipeline.dataset import MelDataset

    ds = MelDataset(out)
    hires = [i for i, r in enumerate(rows) if r["source"] == "hires.wav"][0]
    centres = librosa.mel_frequencies(CFG.n_mels + 2, fmin=CFG.fmin, fmax=CFG.f_max)[1:-1]
    assert abs(int(ds.stored(hires).mean(dim=1).argmax()) - int(np.argmin(np.abs(centres - 1000)))) <= 1
    # the summary a user reads names every bad file and why
    text = s.render()
    for name in ("empty.wav", "corrupt.flac", "notes.mp3", "short.wav"):
        assert name in text
    # failures are retried next time (the file may be fixed) and still reported
    (messy_folder / "empty.wav").unlink()
    write(messy_folder / "empty.wav", noise(6, seed=9), 22050)
    s2 = segment(messy_folder, out, CFG, SegmentConfig(workers=2), progress=False)
    assert s2.by_status["done"] == 1 and "empty.wav" not in json.loads((out / "report.json").read_text())["failed"]


def test_cli_exit_code_is_zero_when_anything_was_processed(messy_folder, tmp_path, capsys):
    assert cli_main(["segment", "--input", str(messy_folder), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "failed (3)" in capsys.readouterr().out


def test_a_file_vanishing_mid_run_is_reported(tmp_path, monkeypatch):
    for seed, name in enumerate(("a.wav", "b.wav", "c.wav")):
        write(tmp_path / "in" / name, noise(6, seed=seed), 22050)
    real_find = segmod.find_audio_files

    def find_then_delete(root):
        files = real_find(root)
        (tmp_path / "in" / "b.wav").unlink()  # gone after listing, before processing
        return files

    monkeypatch.setattr(segmod, "find_audio_files", find_then_delete)
    s = segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    assert "vanished" in s.failures["b.wav"]
    assert s.by_status["done"] == 2


def _process_as_nobody(path, out, queue):
    try:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)  # root reads everything: drop to nobody so permissions apply
        queue.put(process_file(path, path.name, out, CFG, ONE).reason)
    except BaseException as e:  # report instead of hanging the parent
        queue.put(f"child error: {e!r}")


def test_unreadable_file_is_reported():
    root = Path(tempfile.mkdtemp(prefix="technogan-perm-"))
    try:
        os.chmod(root, 0o777)
        f = write(root / "locked.wav", noise(6), 22050)
        os.chmod(f, 0o000)
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_process_as_nobody, args=(f, root / "out", q))
        p.start()
        reason = q.get(timeout=60)
        p.join(timeout=10)
        assert reason.startswith("permission denied"), reason
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_missing_or_empty_input_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["segment", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "cover.jpg").write_bytes(b"jpg")
    assert cli_main(["segment", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_refuses_to_mix_mel_configs_in_one_dataset(tmp_path):
    write(tmp_path / "in" / "a.wav", noise(6), 22050)
    segment(tmp_path / "in", tmp_path / "out", CFG, ONE, progress=False)
    with pytest.raises(UserError, match="n_mels"):
        segment(tmp_path / "in", tmp_path / "out", MelConfig(n_mels=64), ONE, progress=False)


def test_merge_of_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="not a segmented dataset"):
        merge(tmp_path)


def test_workers_take_the_largest_files_first(tmp_path):
    # a long file dispatched last runs alone on one core: sizes decide the order, names break ties
    for name, seconds in (("a.wav", 6), ("b.wav", 20), ("c.wav", 11), ("d.wav", 20)):
        write(tmp_path / name, noise(seconds), 22050)
    (tmp_path / "gone.wav").write_bytes(b"x")
    tasks = [(tmp_path / n, n) for n in ("a.wav", "b.wav", "c.wav", "d.wav", "gone.wav")]
    (tmp_path / "gone.wav").unlink()  # vanished after listing: last, for its worker to report
    order = [t[1] for t in segmod._biggest_first(tasks)]
    assert order == ["b.wav", "d.wav", "c.wav", "a.wav", "gone.wav"]


def test_shards_store_float16_rounded_as_numpy_rounds():
    # the fast conversion must not change a stored byte: ties, the smallest steps, the range's ends
    rng = np.random.default_rng(3)
    ones = np.float32(1.0) - np.arange(64, dtype=np.float32) * np.float32(2.0 ** -12)  # halfway cases near 1
    m = np.concatenate([rng.uniform(-1, 1, 100_000).astype(np.float32), ones, -ones,
                        np.float32([0.0, -0.0, 1e-8, -1e-8, 6e-5, 2.0 ** -25, 1.0, -1.0])])
    got = segmod._stored(m)
    assert got.dtype == segmod.STORE_DTYPE
    assert got.tobytes() == m.astype(np.float16).tobytes()
