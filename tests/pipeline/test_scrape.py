"""The scrape stage end to end through the real download path: a fake backend lists fake
playlists whose videos are real mp3 files on a loopback HTTP server with scripted faults."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import MelConfig, ScrapeConfig, SegmentConfig
from pipeline.fsutil import TMP_PREFIX
from pipeline.scrape.download import HttpFetcher, RetryPolicy
from pipeline.scrape.loop import scrape
from pipeline.scrape.manifest import iter_records, manifest_files, read_manifest
from pipeline.scrape.playlists import PlaylistEntry
from pipeline.shard import Shard
from tests.pipeline.scrape_fakes import AudioServer, FakeBackend, FakeVideo, playlist_url, video_id

REPO = Path(__file__).resolve().parents[2]
N_FILES = 9
SECONDS = 8.0


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict[str, bytes]:
    """Nine real 8-second synthetic techno mp3s, by served name."""
    from pipeline.synth import synthesize

    d = tmp_path_factory.mktemp("scrape_src")
    paths = synthesize(d, tracks=N_FILES, seconds=SECONDS, seed=3, fmt="mp3", progress=False)
    return {f"t{i}.mp3": p.read_bytes() for i, p in enumerate(paths)}


@pytest.fixture(scope="module")
def module_server(audio_files):
    server = AudioServer(audio_files).start()
    yield server
    server.stop()


@pytest.fixture
def server(module_server):
    module_server.reset()
    yield module_server
    module_server.release.set()


def cfg(**kw) -> ScrapeConfig:
    base = dict(retries=3, backoff_seconds=0.01, backoff_max_seconds=0.05, pause_seconds=0.0, connect_timeout=2.0,
                read_timeout=2.0, chunk_bytes=0, min_duration=1.0, max_duration=60.0)
    base.update(kw)
    return ScrapeConfig(**base)


class Sleeps(list):
    """A sleep that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def run(entries, out, backend, config=None, sleeps=None, **kw):
    config = config or cfg()
    retry = RetryPolicy.from_config(config, rng=random.Random(0), sleep=sleeps if sleeps is not None else Sleeps())
    return scrape(entries, out, backend, config, retry=retry, fetcher=HttpFetcher(config), progress=False, **kw)


def catalog(server, n_playlists=2, per=3, dup=True, overrides=None) -> tuple[FakeBackend, list[PlaylistEntry]]:
    """``n_playlists`` playlists of ``per`` videos each (file i for video i); with ``dup`` the
    second playlist also lists the first playlist's first video."""
    playlists, entries, k = {}, [], 0
    for p in range(n_playlists):
        vids = []
        for _ in range(per):
            kw = {"file": f"t{k}.mp3", "duration": SECONDS, **(overrides or {}).get(k, {})}
            vids.append(FakeVideo(video_id(k), **kw))
            k += 1
        if dup and p == 1:
            vids.insert(1, FakeVideo(video_id(0), file="t0.mp3", duration=SECONDS))
        playlists[playlist_url(p)] = vids
        entries.append(PlaylistEntry(url=playlist_url(p), label=f"label{p}"))
    return FakeBackend(server.base_url, playlists), entries


def no_temps(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------- the happy path


def test_scrape_writes_verified_audio_and_manifest_and_is_idempotent(tmp_path, server, audio_files):
    backend, entries = catalog(server)
    out = tmp_path / "out"
    s = run(entries, out, backend)

    assert s.listed == 7 and s.unique == 6 and s.downloaded == 6 and not s.failed
    # the duplicate (video 0, in both playlists) was fetched once
    assert server.full_fetches() == {f"t{i}.mp3": 1 for i in range(6)}
    state = read_manifest(out)
    assert set(state) == {video_id(i) for i in range(6)}
    for i in range(6):
        rec = state[video_id(i)]
        assert rec["status"] == "done" and rec["attempts"] == 1
        f = out / rec["path"]
        assert f == out / "audio" / f"{video_id(i)}.mp3"
        assert f.read_bytes() == audio_files[f"t{i}.mp3"]
        assert rec["sha256"] == sha(audio_files[f"t{i}.mp3"]) and rec["bytes"] == len(audio_files[f"t{i}.mp3"])
        assert abs(rec["duration"] - SECONDS) < 0.5
        assert rec["codec"] == "mp3"  # from ffmpeg's own description of the file
        assert rec["title"] == f"track {video_id(i)}" and rec["uploader"] == "fake uploader"
        assert rec["label"] == ("label0" if i < 3 else "label1")
    assert state[video_id(0)]["playlists"] == [playlist_url(0), playlist_url(1)]
    assert abs(s.seconds - 6 * SECONDS) < 3 and s.bytes == sum(len(audio_files[f"t{i}.mp3"]) for i in range(6))
    assert no_temps(out)

    # second run: nothing fetched, nothing appended, same state
    lines = (out / "manifest.jsonl").read_text().splitlines()
    server.reset()
    s2 = run(entries, out, backend)
    assert s2.downloaded == 0 and s2.already_done == 6
    assert server.hits() == {}
    assert (out / "manifest.jsonl").read_text().splitlines() == lines

    # a done file that disappeared is fetched again
    (out / "audio" / f"{video_id(4)}.mp3").unlink()
    s3 = run(entries, out, backend)
    assert s3.downloaded == 1 and server.full_fetches() == {"t4.mp3": 1}


def test_file_whose_manifest_line_was_lost_is_recovered_not_refetched(tmp_path, server, audio_files):
    backend, entries = catalog(server, n_playlists=1, per=2, dup=False)
    out = tmp_path / "out"
    run(entries, out, backend)
    manifest = out / "manifest.jsonl"
    first, second = manifest.read_text().splitlines()
    manifest.write_text(first + "\n" + second[: len(second) // 2])  # killed between rename and append, torn line
    server.reset()
    s = run(entries, out, backend)
    assert server.hits() == {} and s.already_done == 2 and s.downloaded == 0
    rec = read_manifest(out)[video_id(1)]
    assert rec["status"] == "done" and rec["recovered"] is True and rec["sha256"] == sha(audio_files["t1.mp3"])


def test_done_stays_done_when_filters_change(tmp_path, server):
    backend, entries = catalog(server, n_playlists=1, per=2, dup=False)
    run(entries, tmp_path / "out", backend)
    stricter = [PlaylistEntry(url=entries[0].url, max_duration=5.0)]
    s = run(stricter, tmp_path / "out", backend, max_tracks=1)
    assert s.already_done == 2 and not s.skipped
    assert all(r["status"] == "done" for r in read_manifest(tmp_path / "out").values())


def test_pause_between_downloads(tmp_path, server):
    backend, entries = catalog(server, n_playlists=1, per=3)
    sleeps = Sleeps()
    run(entries, tmp_path / "out", backend, cfg(pause_seconds=1.5), sleeps)
    assert sleeps == [1.5, 1.5]  # between the three downloads, not before the first


def test_chunked_range_download(tmp_path, server, audio_files):
    backend, entries = catalog(server, n_playlists=1, per=1)
    s = run(entries, tmp_path / "out", backend, cfg(chunk_bytes=50_000))
    assert s.downloaded == 1
    size = len(audio_files["t0.mp3"])
    ranges = [r.range for r in server.requests]
    assert len(ranges) == -(-size // 50_000)
    assert ranges[0] == "bytes=0-49999" and ranges[1] == "bytes=50000-99999"
    assert (tmp_path / "out/audio" / f"{video_id(0)}.mp3").read_bytes() == audio_files["t0.mp3"]


# ----------------------------------------------------------------------------- failures


def test_transient_failures_are_retried_and_resume(tmp_path, server, audio_files):
    backend, entries = catalog(server, n_playlists=1, per=4)
    server.add_faults("t0.mp3", "drop", "429", "503")
    server.add_faults("t1.mp3", "drop_mid")
    server.add_faults("t2.mp3", "stall")  # read timeout mid-body
    server.add_faults("t3.mp3", "drop_mid", "norange")  # the resume is answered with the whole file
    sleeps = Sleeps()
    s = run(entries, tmp_path / "out", backend, cfg(read_timeout=0.5), sleeps)

    assert s.downloaded == 4 and not s.failed, s.format(0.1)
    state = read_manifest(tmp_path / "out")
    assert [state[video_id(i)]["attempts"] for i in range(4)] == [4, 2, 2, 2]
    for i in range(4):
        assert (tmp_path / "out" / state[video_id(i)]["path"]).read_bytes() == audio_files[f"t{i}.mp3"]
    # 3 + 1 + 1 + 1 backoffs; the 429's Retry-After: 0 does not shorten the jittered backoff below zero
    assert len(sleeps) == 6 and all(0 <= d <= 0.05 for d in sleeps)
    # the retries after a body cut in half continued from the bytes on disk
    for name in ("t1.mp3", "t2.mp3"):
        first, second = [r.range for r in server.requests if r.name == name]
        assert first is None and second.startswith("bytes=") and second.endswith("-")
        assert 0 < int(second[6:-1]) <= len(audio_files[name]) // 2
    assert no_temps(tmp_path / "out")


def test_retries_exhausted_is_a_transient_failure_retried_next_run(tmp_path, server):
    backend, entries = catalog(server, n_playlists=1, per=2)
    server.add_faults("t1.mp3", *["503"] * 4)
    s = run(entries, tmp_path / "out", backend, cfg(retries=3))
    assert s.downloaded == 1 and s.failed == {"http_503": 1}
    rec = read_manifest(tmp_path / "out")[video_id(1)]
    assert rec["status"] == "failed" and rec["permanent"] is False and rec["attempts"] == 4
    s2 = run(entries, tmp_path / "out", backend)  # a Job retry: the server recovered
    assert s2.downloaded == 1 and s2.already_done == 1 and not s2.failed


def test_permanent_failures_are_recorded_and_not_retried(tmp_path, server):
    backend, entries = catalog(server, n_playlists=1, per=4, dup=False,
                               overrides={1: {"error": "private"}, 2: {"file": "missing.mp3"},
                                          3: {"unavailable": "removed"}})
    sleeps = Sleeps()
    s = run(entries, tmp_path / "out", backend, cfg(max_failure_share=0.5), sleeps)
    assert s.downloaded == 1 and s.failed == {"private": 1, "http_404": 1, "removed": 1}
    assert sleeps == []  # no backoff for permanent errors
    assert backend.resolves == {video_id(0): 1, video_id(1): 1, video_id(2): 1}
    assert [r.name for r in server.requests].count("missing.mp3") == 1
    state = read_manifest(tmp_path / "out")
    for i, reason in [(1, "private"), (2, "http_404"), (3, "removed")]:
        assert state[video_id(i)]["status"] == "failed" and state[video_id(i)]["permanent"] is True
        assert state[video_id(i)]["reason"] == reason
    assert s.failure_share == pytest.approx(0.75) and not s.ok(0.5)

    # rerun: known permanent failures are not asked for again, unless asked to
    s2 = run(entries, tmp_path / "out", backend)
    assert backend.resolves[video_id(1)] == 1 and s2.failed == s.failed
    run(entries, tmp_path / "out", backend, retry_failed=True)
    assert backend.resolves[video_id(1)] == 2


def test_corrupt_download_is_detected_and_not_kept(tmp_path, server, audio_files):
    backend, entries = catalog(server, n_playlists=1, per=3, dup=False)
    server.add_faults("t0.mp3", *["corrupt"] * 4)  # corrupt on every attempt
    server.add_faults("t1.mp3", "corrupt")  # corrupt once, then fine
    server.add_faults("t2.mp3", *["short"] * 4)  # decodes, but to half the listed duration
    s = run(entries, tmp_path / "out", backend, cfg(max_failure_share=1.0))
    assert s.downloaded == 1 and s.failed == {"corrupt": 1, "duration_mismatch": 1}
    state = read_manifest(tmp_path / "out")
    assert state[video_id(0)]["attempts"] == 4 and state[video_id(0)]["reason"] == "corrupt"
    assert "ffprobe" in state[video_id(0)]["error"] or "ffmpeg" in state[video_id(0)]["error"]
    assert state[video_id(2)]["attempts"] == 4 and "listing says 8.0 s" in state[video_id(2)]["error"]
    assert state[video_id(1)]["status"] == "done" and state[video_id(1)]["attempts"] == 2
    assert (tmp_path / "out" / state[video_id(1)]["path"]).read_bytes() == audio_files["t1.mp3"]
    assert sorted(p.name for p in (tmp_path / "out/audio").iterdir()) == [f"{video_id(1)}.mp3"]


def test_listing_failures(tmp_path, server):
    backend, entries = catalog(server, n_playlists=2, per=2, dup=False)
    backend.list_errors = {playlist_url(0): ["transient", "transient"], playlist_url(1): ["permanent"]}
    s = run(entries, tmp_path / "out", backend, cfg(max_failure_share=0.5))
    assert s.downloaded == 2  # playlist 0 listed on its third try
    assert s.listing_failures == {playlist_url(1): "removed"}
    assert s.failure_share == pytest.approx(1 / 3) and s.ok(0.5) and not s.ok(0.2)


# ----------------------------------------------------------------------------- filters


def test_duration_filter(tmp_path, server):
    vids = [
        FakeVideo(video_id(0), file="t0.mp3", duration=SECONDS),
        FakeVideo(video_id(1), file="t1.mp3", duration=0.5),  # too short
        FakeVideo(video_id(2), file="t2.mp3", duration=3600.0),  # a DJ mix: too long
        FakeVideo(video_id(3), file="t3.mp3", duration=None),  # unknown: judged after download
    ]
    backend = FakeBackend(server.base_url, {playlist_url(0): vids,
                                            playlist_url(1): [FakeVideo(video_id(4), file="t4.mp3", duration=SECONDS)],
                                            playlist_url(2): [FakeVideo(video_id(4), file="t4.mp3", duration=SECONDS)]})
    entries = [PlaylistEntry(url=playlist_url(0), max_duration=7.5, min_duration=1.0),
               PlaylistEntry(url=playlist_url(1), min_duration=10.0),  # filters video 4 out ...
               PlaylistEntry(url=playlist_url(2))]  # ... this one takes it (defaults 1..60 s)
    config = cfg(duration_tolerance=0.1)
    # video 0 is listed at 8 s but this playlist's max is 7.5 s
    s = run(entries, tmp_path / "out", backend, config)
    state = read_manifest(tmp_path / "out")
    assert {k: (v["status"], v.get("reason")) for k, v in state.items()} == {
        video_id(0): ("skipped", "too_long"), video_id(1): ("skipped", "too_short"),
        video_id(2): ("skipped", "too_long"), video_id(3): ("skipped", "too_long"),
        video_id(4): ("done", None)}
    assert s.skipped == {"too_long": 3, "too_short": 1} and s.downloaded == 1
    assert server.full_fetches() == {"t3.mp3": 1, "t4.mp3": 1}  # only the unknown one and the accepted one
    assert state[video_id(4)]["playlist"] == playlist_url(2)
    assert state[video_id(4)]["playlists"] == [playlist_url(1), playlist_url(2)]
    assert sorted(p.name for p in (tmp_path / "out/audio").iterdir()) == [f"{video_id(4)}.mp3"]
    # skips are not appended again on a rerun
    n = sum(1 for _ in iter_records(tmp_path / "out"))
    run(entries, tmp_path / "out", backend, config)
    assert sum(1 for _ in iter_records(tmp_path / "out")) == n + 1  # only video 3 (unknown duration) is re-judged


def test_max_tracks(tmp_path, server):
    backend, entries = catalog(server, n_playlists=2, per=3, dup=False)
    entries[0] = PlaylistEntry(url=playlist_url(0), max_tracks=2)
    s = run(entries, tmp_path / "out", backend, max_tracks=4)
    state = read_manifest(tmp_path / "out")
    done = sorted(k for k, v in state.items() if v["status"] == "done")
    assert done == [video_id(i) for i in (0, 1, 3, 4)]
    assert s.skipped == {"max_tracks": 1}  # video 5; video 2 is beyond playlist 0's max and never considered


def test_dry_run_writes_nothing(tmp_path, server):
    backend, entries = catalog(server)
    s = run(entries, tmp_path / "out", backend, dry_run=True)
    assert s.unique == 6 and s.downloaded == 0 and abs(s.seconds - 6 * SECONDS) < 1e-6
    assert not (tmp_path / "out").exists() and server.requests == []


# ----------------------------------------------------------------------------- sharding


def test_three_shards_fetch_each_video_exactly_once(tmp_path, server, audio_files):
    backend, entries = catalog(server, n_playlists=3, per=3)
    out = tmp_path / "shared"
    results: dict[int, object] = {}

    def pod(i: int) -> None:  # three pods on one shared volume, at the same time
        results[i] = run(entries, out, backend, shard=Shard(i, 3))

    threads = [threading.Thread(target=pod, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert server.full_fetches() == {f"t{i}.mp3": 1 for i in range(9)}
    assert sum(r.downloaded for r in results.values()) == 9
    assert sorted(p.name for p in manifest_files(out)) == [f"manifest.shard-{i}-of-3.jsonl" for i in range(3)]
    seen: dict[str, str] = {}
    for path in manifest_files(out):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            assert rec["id"] not in seen, f"{rec['id']} in {seen.get(rec['id'])} and {path.name}"
            seen[rec["id"]] = path.name
            assert Shard(int(path.name.split("-")[1]), 3).owns(rec["id"])
    state = read_manifest(out)
    assert sorted(state) == [video_id(i) for i in range(9)] and all(r["status"] == "done" for r in state.values())
    # an unsharded rerun (another shard count) sees every shard's work and fetches nothing
    server.reset()
    s = run(entries, out, backend)
    assert s.already_done == 9 and server.hits() == {}


# ----------------------------------------------------------------------------- kill and resume


def _write_inputs(tmp_path: Path, backend: FakeBackend, entries, **config) -> list[str]:
    (tmp_path / "catalog.json").write_text(backend.to_json())
    (tmp_path / "playlists.yaml").write_text(yaml.safe_dump({"playlists": [e.model_dump(exclude_none=True)
                                                                           for e in entries]}))
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump({"scrape": cfg(**config).model_dump()}))
    return [sys.executable, "-m", "tests.pipeline.scrape_fakes", str(tmp_path / "catalog.json"),
            "--playlists", str(tmp_path / "playlists.yaml"), "--config", str(tmp_path / "preset.yaml"),
            "--out", str(tmp_path / "out"), "--no-progress"]


def _wait_for(cond, timeout=60.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_without_partial_files(tmp_path, server, audio_files, sig):
    backend, entries = catalog(server, n_playlists=1, per=3, dup=False)
    server.add_faults("t1.mp3", "stall")  # the second download hangs mid-body
    cmd = _write_inputs(tmp_path, backend, entries, read_timeout=120.0)
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stalled.wait(60), "the download never started"
        tmp = out / "audio" / f"{TMP_PREFIX}{video_id(1)}.part"
        _wait_for(lambda: tmp.exists() and tmp.stat().st_size > 0)
        proc.send_signal(sig)
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    server.release.set()

    # killed mid-download: the partial file only exists under its temporary name
    assert not (out / "audio" / f"{video_id(1)}.mp3").exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, log
        assert not tmp.exists()  # a polite stop cleans up after itself
    else:
        assert tmp.exists() and 0 < tmp.stat().st_size < len(audio_files["t1.mp3"])
    state = read_manifest(out)
    assert set(state) == {video_id(0)} and state[video_id(0)]["status"] == "done"
    assert (out / state[video_id(0)]["path"]).read_bytes() == audio_files["t0.mp3"]

    # the rerun finishes the job, leaves no temp and does not fetch video 0 again
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done: 3 (2 downloaded now, 1 already there)" in r.stdout
    assert server.full_fetches()["t0.mp3"] == 1
    state = read_manifest(out)
    assert all(state[video_id(i)]["status"] == "done" for i in range(3))
    for i in range(3):
        assert (out / state[video_id(i)]["path"]).read_bytes() == audio_files[f"t{i}.mp3"]
    assert no_temps(out)


def test_exit_status_and_summary(tmp_path, server):
    backend, entries = catalog(server, n_playlists=1, per=3, dup=False, overrides={2: {"error": "age_restricted"}})
    # above the allowed share, all permanent: 3 (a podFailurePolicy can fail the Job instead of retrying)
    cmd = _write_inputs(tmp_path, backend, entries, max_failure_share=0.2)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "scrape FAILED" in r.stdout and "failed: age_restricted 1" in r.stdout
    assert f"failed {video_id(2)}: age_restricted" in r.stdout
    assert "above scrape.max_failure_share 20.0% (all permanent" in r.stderr
    # within the allowed share: 0
    cmd = _write_inputs(tmp_path, backend, entries, max_failure_share=0.5)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scrape finished" in r.stdout and "videos listed: 3 (3 unique, 3 in this shard)" in r.stdout
    assert "done: 2 (0 downloaded now, 2 already there)" in r.stdout

    # a transient failure above the share: 1, so the Job retries the pod
    backend, entries = catalog(server, n_playlists=1, per=4, dup=False)
    server.add_faults("t3.mp3", *["503"] * 4)
    cmd = _write_inputs(tmp_path, backend, entries, max_failure_share=0.5)
    cmd[cmd.index("--out") + 1] = str(tmp_path / "out2")
    server.add_faults("t2.mp3", *["503"] * 4)
    server.add_faults("t1.mp3", "corrupt", "corrupt", "corrupt", "corrupt")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed: corrupt 1, http_503 2" in r.stdout and "3 of 3 failures may pass on a retry" in r.stdout
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)  # the retried pod
    assert r.returncode == 0 and "done: 4 (3 downloaded now, 1 already there)" in r.stdout, r.stdout + r.stderr


# ----------------------------------------------------------------------------- the chain


def test_output_feeds_segment_unchanged(tmp_path, server):
    from pipeline.segment import segment

    backend, entries = catalog(server, n_playlists=1, per=3, dup=False)
    out = tmp_path / "out"
    run(entries, out, backend)
    # a leftover temp must not be read as a track
    (out / "audio" / f"{TMP_PREFIX}{video_id(7)}.part").write_bytes(b"partial")
    summary = segment(out, tmp_path / "dataset", MelConfig(), SegmentConfig(workers=1), progress=False)
    assert summary.total_tracks == 3
    assert summary.total_clips == 3 * int(SECONDS // MelConfig().clip_seconds)


# ----------------------------------------------------------------------------- hostile listings and URLs (issue 12, item 12)

# ids a listing (or a stub standing in for YouTube) might return that are not video ids
BAD_IDS = ["../../escaped-by-id", "../escaped1", "/etc/passwd", "..", ".", "", "a/b/c/d/e/f", "abc\\def\\ghi",
           "vid0000000*", "vid0000000?", ".tmp-000000", "vid00000001x", "vid000000", "vid\x00000000",
           "víd00000001", "vid0000 001", 12345678901, None]


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # the loopback audio server
@pytest.mark.parametrize("bad", BAD_IDS, ids=[repr(b) for b in BAD_IDS])
def test_listed_ids_that_are_not_video_ids_are_refused_per_entry(tmp_path, server, bad):
    work = tmp_path / "deep" / "er"
    out = work / "out"
    backend = FakeBackend(server.base_url, {playlist_url(0): [
        FakeVideo(video_id(0), file="t0.mp3", duration=SECONDS),
        FakeVideo(bad, file="t1.mp3", duration=SECONDS),
        FakeVideo(video_id(2), file="t2.mp3", duration=SECONDS)]})
    s = run([PlaylistEntry(url=playlist_url(0))], out, backend)
    assert s.downloaded == 2  # the good ones around it are fetched
    assert s.failed == {"invalid_id": 1} and "invalid_id" in s.failed_ids[repr(bad)]
    assert "not a YouTube video id" in s.format(0.1)
    assert backend.resolves[bad] == 0 and "t1.mp3" not in server.hits()  # never resolved or fetched
    files = _files_under(tmp_path)
    assert files == {out / "audio" / f"{video_id(0)}.mp3", out / "audio" / f"{video_id(2)}.mp3",
                     out / "manifest.jsonl"}, files
    assert [r["id"] for r in iter_records(out)] == [video_id(0), video_id(2)]


@pytest.mark.slow  # the loopback audio server
def test_refused_ids_count_as_failures_in_the_exit_status(tmp_path, server):
    backend = FakeBackend(server.base_url, {playlist_url(0): [
        FakeVideo("../../escaped-by-id", file="t1.mp3", duration=SECONDS),
        FakeVideo(video_id(2), file="t2.mp3", duration=SECONDS)]})
    s = run([PlaylistEntry(url=playlist_url(0))], tmp_path / "out", backend)
    assert s.failure_share == 0.5 and s.exit_status(0.1) == 3  # permanent: a retry cannot help


BAD_LIST_URLS = [
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=../../escaped",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PL%2F..%2F..%2Fescaped",
    "https://www.youtube.com/playlist?list=PLgoodgoodgood&list=../../x",
    "https://www.youtube.com/playlist?list=PL../../../../etc",
    "https://youtu.be/dQw4w9WgXcQ?list=PLabc/defghij",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PLabc%00defghij",
]


@pytest.mark.parametrize("url", BAD_LIST_URLS)
def test_a_list_id_with_path_characters_is_refused_at_load(tmp_path, url):
    from pipeline.config import ConfigError
    from pipeline.scrape.playlists import load_playlists

    p = tmp_path / "playlists.yaml"
    p.write_text(yaml.safe_dump({"playlists": [{"url": url}]}))
    with pytest.raises(ConfigError, match=r"entry 1 .*url: .*list= id"):
        load_playlists(p)


@pytest.mark.parametrize("url", BAD_LIST_URLS)
def test_a_list_id_with_path_characters_never_reaches_the_backend(tmp_path, url):
    backend = FakeBackend("http://127.0.0.1:9", {})  # never fetched from: nothing is listed
    s = run([PlaylistEntry(url=url), PlaylistEntry(url=playlist_url(3))], tmp_path / "out", backend)
    assert s.listing_failures[url] == "invalid_url"
    assert backend.listed == [playlist_url(3)]  # only the good entry, as a URL rebuilt from its checked id


@pytest.mark.slow  # the loopback audio server
def test_the_backend_gets_urls_rebuilt_from_checked_ids(tmp_path, server):
    backend = FakeBackend(server.base_url, {"https://www.youtube.com/watch?v=vid00000000": [
        FakeVideo(video_id(0), file="t0.mp3", duration=SECONDS)]})
    s = run([PlaylistEntry(url="https://m.youtube.com/watch?v=vid00000000&list=PLgoodgoodgood&t=30")],
            tmp_path / "out", backend)
    assert backend.listed == ["https://www.youtube.com/watch?v=vid00000000"] and s.downloaded == 1


def _cli_args(tmp_path: Path, *extra: str):
    import argparse

    from pipeline.scrape import cli

    (tmp_path / "playlists.yaml").write_text(yaml.safe_dump({"playlists": [playlist_url(0), playlist_url(1)]}))
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump({"scrape": cfg(retries=0).model_dump()}))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["--playlists", str(tmp_path / "playlists.yaml"), "--out", str(tmp_path / "out"),
                              "--config", str(tmp_path / "preset.yaml"), "--no-progress", *extra])


@pytest.mark.slow  # the loopback audio server
@pytest.mark.parametrize("errors, expected", [
    ({playlist_url(0): ["permanent"], playlist_url(1): ["permanent"]}, 3),  # nothing a retry can fix
    ({playlist_url(0): ["permanent"], playlist_url(1): ["transient"]}, 1),  # a retry may list it
    ({playlist_url(0): ["transient"], playlist_url(1): ["transient"]}, 1),
    ({playlist_url(0): ["permanent"]}, 0),  # one playlist listed: the plan is real
])
def test_dry_run_fails_when_no_playlist_could_be_listed(tmp_path, server, capsys, errors, expected):
    from pipeline.scrape import cli

    backend, _ = catalog(server, n_playlists=2, per=2, dup=False)
    backend.list_errors = errors
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(_cli_args(tmp_path, "--dry-run"), backend=backend) == expected
    assert signal.getsignal(signal.SIGTERM) is before  # its handler for the pod's SIGTERM does not outlive it
    assert "playlists not listed" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and server.requests == []


@pytest.mark.slow  # the loopback audio server
def test_a_server_that_trickles_bytes_is_given_up_on(tmp_path, server):
    backend, entries = catalog(server, n_playlists=1, per=2, dup=False)
    server.add_faults("t0.mp3", "trickle")  # never silent for read_timeout, yet minutes for the file
    s = run(entries, tmp_path / "out", backend, cfg(retries=0, read_timeout=5.0, download_timeout=0.5))
    assert s.failed == {"too_slow": 1} and "download_timeout" in s.failed_ids[video_id(0)]
    assert s.downloaded == 1  # the other video is not held up
    assert no_temps(tmp_path / "out")
    rec = read_manifest(tmp_path / "out")[video_id(0)]
    assert rec["status"] == "failed" and rec["reason"] == "too_slow" and not rec["permanent"]


@pytest.mark.slow  # the loopback audio server
def test_a_trickled_download_continues_on_the_next_attempt(tmp_path, server, audio_files):
    backend, entries = catalog(server, n_playlists=1, per=1, dup=False)
    server.add_faults("t0.mp3", "trickle")
    s = run(entries, tmp_path / "out", backend, cfg(retries=1, read_timeout=5.0, download_timeout=0.5))
    assert s.downloaded == 1 and not s.failed
    assert (tmp_path / "out" / "audio" / f"{video_id(0)}.mp3").read_bytes() == audio_files["t0.mp3"]
    ranges = [r.range for r in server.requests if r.name == "t0.mp3"]
    assert len(ranges) == 2 and ranges[1] is not None and not ranges[1].startswith("bytes=0-")  # resumed
