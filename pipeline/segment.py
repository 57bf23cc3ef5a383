"""Turn a folder of audio files into a dataset of 5 s log-mel spectrograms.

Every audio file under the input folder is decoded in process (``pipeline.decode``:
libsndfile, PyAV, the ffmpeg command line as the fallback) to mono at the mel
config's sample rate, streamed in clip-sized blocks (memory stays bounded whatever
the file length), cut into non-overlapping clips (the remainder is dropped), and
each non-silent clip becomes a normalised log-mel [n_mels, n_frames] stored as
float16.

Dataset layout (``OUT``)::

    mel_config.json        the one mel config the dataset was made with
    shards/<track>.f16     raw float16 [clips, n_mels, n_frames], memory-mappable
    parts/<track>-<name>.json  per-track, per-file-name record (its clips' index rows); present = done
    failures/<key>.json    files that could not be used in the latest attempt, with why
    index.jsonl            merged: one line per clip (track_id, source, sha256, clip,
                           start_s, shard, row, peak_db: the level its dB are relative to)
    tracks.jsonl           merged: one line per track
    report.json            merged summary: counts, skipped and failed files with reasons

A track's id is the first 16 hex digits of its content's sha256, so a track done
once is never redone (a restart after a kill resumes), the same audio under two
names is stored once, and N shards writing into one folder never collide.
Shards and parts are written to temp names and renamed, so a kill leaves nothing
half written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import MelConfig, SegmentConfig, add_config_argument, load_config
from pipeline.errors import UserError
from pipeline.decode import DECODERS, ClipStream
from pipeline.fsutil import TMP_PREFIX, atomic_write_text, ensure_folder, owned_temp, remove_dead_temps, sha256_file
from pipeline.mel import log_mel, log_mel_with_peaks
from pipeline.shard import Shard, parse_shard

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac"})
STORE_DTYPE = np.float16
TRUNCATION_TOLERANCE_S = 1.0


@dataclass
class FileResult:
    """What happened to one input file."""

    source: str  # path relative to the input folder
    status: str  # done | already | duplicate | skipped | failed
    reason: str = ""
    track_id: str = ""
    clips: int = 0
    silent_clips: int = 0
    decoded_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass
class SegmentSummary:
    files: int = 0
    by_status: Counter = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # source -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # source -> reason
    warnings: dict[str, list[str]] = field(default_factory=dict)
    new_clips: int = 0
    silent_clips: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    total_clips: int = 0  # in the merged dataset (when merged)
    total_tracks: int = 0

    def add(self, r: FileResult) -> None:
        self.files += 1
        self.by_status[r.status] += 1
        if r.status == "failed":
            self.failures[r.source] = r.reason
        elif r.status in ("skipped", "duplicate"):
            self.skipped[r.source] = r.reason
        if r.warnings:
            self.warnings[r.source] = r.warnings
        self.new_clips += r.clips if r.status == "done" else 0
        self.silent_clips += r.silent_clips if r.status in ("done", "skipped") else 0
        self.audio_seconds += r.decoded_seconds

    def render(self) -> str:
        rate = self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0
        lines = [
            f"files: {self.files} ({', '.join(f'{k} {v}' for k, v in sorted(self.by_status.items())) or 'none'})",
            f"clips written: {self.new_clips}; silent clips skipped: {self.silent_clips}",
            f"audio decoded: {self.audio_seconds / 3600:.3f} h in {self.wall_seconds:.1f} s "
            f"({rate:.0f} s of audio per second)",
        ]
        if self.total_tracks:
            lines.append(f"dataset: {self.total_tracks} tracks, {self.total_clips} clips")
        for title, items in (("skipped", self.skipped), ("failed", self.failures)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {display_name(src)}: {why}" for src, why in sorted(items.items())]
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += [f"  {display_name(src)}: {'; '.join(w)}" for src, w in sorted(self.warnings.items())]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- discovery


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root``, sorted, skipping hidden and temp files."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.startswith(TMP_PREFIX):
                continue
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                files.append(Path(dirpath) / name)
    return files


# ----------------------------------------------------------------------------- decoding


def _wav_declared_seconds(path: Path) -> float | None:
    """Duration a RIFF/WAVE header declares (its data chunk size), or None if unclear."""
    import struct

    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = 0
        while chunk := f.read(8):
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size)
                byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else 0
                f.seek(size % 2, 1)
            elif cid == b"data":
                return size / byte_rate if byte_rate and size < 0xFFFFFFFF else None
            else:
                f.seek(size + size % 2, 1)
    return None


# ----------------------------------------------------------------------------- one file


def _track_id(sha: str) -> str:
    return sha[:16]


def source_bytes(source: str) -> bytes:
    """A relative path as the file system spells it. Names that are not valid UTF-8 are
    carried in str as lone surrogates (``os.fsdecode``); this undoes that."""
    return source.encode("utf-8", "surrogateescape")


def display_name(source: str) -> str:
    """A source path printable on any terminal: undecodable bytes shown as ``\\xe9``."""
    return source_bytes(source).decode("utf-8", "backslashreplace")


def _source_key(source: str) -> str:
    return hashlib.sha1(source_bytes(source)).hexdigest()[:16]


_failure_key = _source_key


def _part_path(out: Path, tid: str, source: str) -> Path:
    # one part per (audio, name): two names of one audio never write the same file,
    # and merge picks the name that indexes the track by order, not by who finished first
    return out / "parts" / f"{tid}-{_source_key(source)}.json"


def read_json(path: Path) -> dict:
    """A JSON object written by this module; UserError naming the file if it is not one."""
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete it and run segment again") from None
    if not isinstance(doc, dict) or "source" not in doc:
        raise UserError(f"{path} is not a segment record (no 'source'); delete it and run segment again")
    return doc


def _parts_of(out: Path, tid: str) -> list[Path]:
    """Every part of track ``tid`` (``<tid>.json`` is the layout before per-name parts)."""
    return sorted((out / "parts").glob(f"{tid}-*.json")) + [p for p in [out / "parts" / f"{tid}.json"] if p.exists()]


def process_file(path: Path, source: str, out: Path, cfg: MelConfig, seg: SegmentConfig) -> FileResult:
    """Decode, cut, mel and store one file. Never raises for a bad file: the result says why."""
    try:
        return _process_file(path, source, out, cfg, seg)
    except FileNotFoundError:
        return FileResult(source, "failed", "vanished: the file disappeared while being processed")
    except PermissionError as e:
        return FileResult(source, "failed", f"permission denied: {e.strerror or e}")
    except IsADirectoryError:
        return FileResult(source, "failed", "is a directory")
    except OSError as e:
        return FileResult(source, "failed", f"I/O error: {e}")


def _current(record: dict) -> bool:
    """Whether a part record has everything this version records (each clip's ``peak_db``)."""
    rows = record.get("rows")
    return not isinstance(rows, list) or all(isinstance(r, dict) and "peak_db" in r for r in rows)


def _stored(mels: np.ndarray) -> np.ndarray:
    """Mels as the shards store them. torch converts to float16 ~10x faster than numpy's
    ``astype`` (measured: ~2 % of a run), with the same rounding."""
    return torch.from_numpy(mels).to(torch.float16).numpy()


def _process_file(path: Path, source: str, out: Path, cfg: MelConfig, seg: SegmentConfig) -> FileResult:
    size = path.stat().st_size
    if size == 0:
        return FileResult(source, "failed", "empty file (0 bytes)")
    sha = sha256_file(path)
    tid = _track_id(sha)
    part_path = _part_path(out, tid, source)
    if part_path.is_file():  # a re-run's common case: one stat instead of a listing of parts/ per file
        with contextlib.suppress(UserError):
            done = read_json(part_path)
            if done.get("source") == source and _current(done):
                return FileResult(source, "already", "", tid)
    for existing in _parts_of(out, tid):
        try:
            done = read_json(existing)
        except UserError:
            continue  # a damaged record: redo the work, merge names the file
        if not _current(done):
            continue  # written before clips' levels were recorded: redone, the same clips plus their levels
        if done.get("source") == source:
            return FileResult(source, "already", "", tid)
        if "rows" in done:
            # the same audio under another name: its clips are this file's clips, no need to decode
            atomic_write_text(part_path, json.dumps({**done, "source": source}) + "\n")
            return FileResult(source, "duplicate", f"same audio as {display_name(done['source'])}", tid)

    shard_rel = f"shards/{tid}.f16"
    stream = ClipStream(path, cfg, seg.batch_clips, seg.decoder)
    clips = silent = decoded = 0
    rows: list[dict[str, Any]] = []
    peak_floor = 10.0 ** (seg.silence_dbfs / 20.0)
    # the shard is written under a temp name and renamed only when complete
    tmp_shard = owned_temp(out / "shards", f"{tid}.f16")
    try:
        with open(tmp_shard, "wb") as fh:
            for batch in stream:  # [K, clip_samples]
                keep = np.abs(batch).max(axis=1) >= peak_floor
                if keep.any():
                    kept = batch if keep.all() else batch[keep]  # [K', N]
                    mels, peaks = log_mel_with_peaks(kept, cfg)  # [K', M, T], [K']
                    fh.write(_stored(mels).tobytes())
                    for k, peak in zip(np.flatnonzero(keep), peaks):
                        no = decoded + int(k)
                        rows.append({"clip": no, "start_s": round(no * cfg.clip_seconds, 3), "row": len(rows),
                                     "peak_db": round(float(peak), 3)})
                clips += int(keep.sum())
                silent += int((~keep).sum())
                decoded += len(batch)
            fh.flush()
            os.fsync(fh.fileno())
        if clips:
            os.replace(tmp_shard, out / shard_rel)
    finally:
        tmp_shard.unlink(missing_ok=True)

    decoded_s = stream.samples / cfg.sample_rate
    info = stream.info
    if path.suffix.lower() == ".wav":
        # ffmpeg estimates a WAV's duration from its size; the header says what was meant
        info["declared_seconds"] = _wav_declared_seconds(path) or info["declared_seconds"]
    warnings = []
    if stream.error:
        if not path.exists():
            raise FileNotFoundError(path)
        if stream.samples == 0:
            what = "not audio" if not stream.decoder or info["sample_rate"] == 0 else "decode error"
            return FileResult(source, "failed", f"{what}: {stream.error}", tid)
        warnings.append(f"decode error after {decoded_s:.1f} s, kept what decoded: {stream.error}")
    declared = info["declared_seconds"]
    if np.isfinite(declared) and declared - decoded_s > TRUNCATION_TOLERANCE_S:
        warnings.append(f"truncated: decoded {decoded_s:.1f} s of {declared:.1f} s declared")
    if decoded == 0:
        # too short is a property of the content: recorded as done so it is not retried
        status, reason = "skipped", f"too short: {decoded_s:.1f} s < one {cfg.clip_seconds:g} s clip"
    elif clips == 0:
        status, reason = "skipped", f"all {silent} clips silent (peak below {seg.silence_dbfs:g} dBFS)"
    else:
        status, reason = "done", ""
    # the part file is the commit record: written only after the shard is in place
    record = {
        "track_id": tid, "source": source, "sha256": sha, "bytes": size, "status": status, "reason": reason,
        "shard": shard_rel if clips else None, "clips": clips, "silent_clips": silent,
        "decoded_seconds": round(decoded_s, 3), **info, "decoder": stream.decoder, "warnings": warnings,
        "rows": rows,
    }
    atomic_write_text(part_path, json.dumps(record) + "\n")
    return FileResult(source, status, reason, tid, clips, silent, decoded_s, warnings)


def _process_file_safe(path: Path, source: str, out: Path, cfg: MelConfig, seg: SegmentConfig) -> FileResult:
    """process_file, plus the failure record that makes a bad file visible until it is fixed."""
    result = process_file(path, source, out, cfg, seg)
    fail_path = out / "failures" / f"{_failure_key(source)}.json"
    if result.status == "failed":
        atomic_write_text(fail_path, json.dumps({"source": source, "reason": result.reason,
                                                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    else:
        fail_path.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------- batch


def _worker_init() -> None:
    # A forked worker inherits the parent's signal handlers. With a Python-level SIGTERM
    # handler there (scrape's, a caller's), Pool.terminate() at the end of segment could
    # wait forever on a worker that is blocked in C and never runs it: the default action
    # ends the worker whatever it is doing.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # one thread per worker process: the parallelism is across files
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _worker(task: tuple) -> FileResult:
    return _process_file_safe(*task)


def segment(
    input_dir: str | Path,
    out_dir: str | Path,
    mel_config: MelConfig | None = None,
    seg_config: SegmentConfig | None = None,
    shard: Shard | None = None,
    progress: bool = True,
) -> SegmentSummary:
    """Segment every audio file under ``input_dir`` (this shard's slice) into ``out_dir``.

    Unsharded runs also merge the index; sharded runs leave that to ``merge``.
    Raises UserError for a missing or empty input folder or a mel config clash.
    """
    cfg = mel_config or MelConfig()
    seg = seg_config or SegmentConfig()
    shard = shard or Shard()
    src, out = Path(input_dir), Path(out_dir)
    if not src.is_dir():
        raise UserError(f"input folder {src} does not exist or is not a folder")
    files = find_audio_files(src)
    if not files:
        raise UserError(f"no audio files under {src} (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    _prepare_out(out, cfg)
    tasks = [(p, os.fsdecode(p.relative_to(src)).replace(os.sep, "/"), out, cfg, seg) for p in files]
    _forget_failures_of_removed_files(out, {t[1] for t in tasks}, shard)
    tasks = _biggest_first([t for t in tasks if shard.owns(t[1])])
    workers = min(seg.workers or os.cpu_count() or 1, max(1, len(tasks)))
    log.info("segmenting %d files (shard %s) from %s into %s with %d workers", len(tasks), shard, src, out, workers)

    running = SegmentSummary()
    results = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(tasks), desc=f"segment {shard}", unit="file", disable=not progress)
    for result in _run_tasks(tasks, workers):
        results.append(result)
        running.add(result)
        bar.update(1)
        bar.set_postfix(clips=running.new_clips, failed=running.by_status["failed"], refresh=False)
    bar.close()
    summary = SegmentSummary()
    for result in sorted(_settle_duplicates(results, out), key=lambda r: source_bytes(r.source)):
        summary.add(result)
    summary.wall_seconds = time.perf_counter() - t0
    if shard.count == 1:
        merged = merge(out)
        summary.total_clips, summary.total_tracks = merged["clips"], merged["tracks"]
    return summary


def _biggest_first(tasks: list[tuple]) -> list[tuple]:
    """Tasks in the order workers should take them: largest file first (ties by name).
    Time per file grows with its length, so the long ones started last would run alone
    on one core while the others idle; started first, the short ones fill in around them.
    A file that cannot be stat'ed goes last (its worker reports why)."""
    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return -1

    return sorted(tasks, key=lambda t: (-size(t[0]), source_bytes(t[1])))


def _winner(sources) -> str:
    """The name that indexes a track stored under several: the first in byte order."""
    return min(sources, key=source_bytes)


def _settle_duplicates(results: list[FileResult], out: Path) -> list[FileResult]:
    """Statuses that do not depend on which worker finished first: of the names of one
    audio, the winner (as merge picks it) is ``done`` if anyone decoded it in this run,
    every other name is a ``duplicate`` of the winner."""
    groups: dict[str, list[FileResult]] = {}
    for r in results:
        if r.track_id and r.status in ("done", "duplicate", "already"):
            groups.setdefault(r.track_id, []).append(r)
    for tid, group in groups.items():
        if len(group) == 1 and group[0].status != "duplicate":
            continue
        known = {r.source for r in group}
        for p in _parts_of(out, tid):
            try:
                known.add(read_json(p)["source"])
            except UserError:
                pass  # merge names the damaged record
        win = _winner(known)
        decoded = next(((r.clips, r.silent_clips, r.warnings) for r in group if r.status == "done"), None)
        for r in group:
            if r.source == win and decoded is not None:
                r.status, r.reason = "done", ""
                r.clips, r.silent_clips, r.warnings = decoded
            elif r.source != win:
                r.status, r.reason, r.clips, r.silent_clips = "duplicate", f"same audio as {display_name(win)}", 0, 0
    return results


def _forget_failures_of_removed_files(out: Path, sources: set[str], shard: Shard) -> None:
    """A failure record names a file in the input; once that file is gone, so is the record
    (each shard forgets only names it owns: another pod may see another listing)."""
    for p in (out / "failures").glob("*.json"):
        try:
            source = read_json(p)["source"]
        except UserError:
            continue  # merge names the damaged file
        if source not in sources and shard.owns(source):
            p.unlink(missing_ok=True)


def _run_tasks(tasks: list[tuple], workers: int) -> Iterable[FileResult]:
    if workers <= 1:
        for t in tasks:
            yield _worker(t)
        return
    # build the filterbank and FFT plans once, so forked workers inherit them
    log_mel(np.zeros((1, tasks[0][3].clip_samples), np.float32), tasks[0][3])
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_worker, tasks, chunksize=1)


def _prepare_out(out: Path, cfg: MelConfig) -> None:
    ensure_folder(out, "shards", "parts", "failures")
    cfg_path = out / "mel_config.json"
    if cfg_path.exists():
        existing = MelConfig.load(cfg_path)
        if existing != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in existing.to_dict().items() if getattr(cfg, k) != v}
            raise UserError(f"{out} holds a dataset made with another mel config (differs in: "
                            + ", ".join(f"{k} {a} != {b}" for k, (a, b) in diff.items()) + "); use a new --out")
    else:
        cfg.save(cfg_path)
    # only files whose writer is dead: other shards may be writing into this folder right now
    removed = remove_dead_temps(out / "shards") + remove_dead_temps(out / "parts")
    if removed:
        log.info("removed %d partial files left by an interrupted run", removed)


# ----------------------------------------------------------------------------- merge


def merge(out_dir: str | Path) -> dict:
    """Join all per-track parts (from any number of shards) into ``index.jsonl``,
    ``tracks.jsonl`` and ``report.json``. Deterministic: ordered by source path."""
    out = Path(out_dir)
    if not (out / "mel_config.json").is_file():
        raise UserError(f"{out} is not a segmented dataset (no mel_config.json)")
    by_track: dict[str, dict] = {}
    skipped = {}
    for p in sorted((out / "parts").glob("*.json")):
        r = read_json(p)
        if not {"track_id", "rows", "status", "reason", "clips"} <= r.keys():
            raise UserError(f"{p} is not a complete segment record; delete it and run segment again")
        by_track.setdefault(r["track_id"], {})[r["source"]] = r
    parts = []
    for named in by_track.values():
        win = _winner(named)
        parts.append(named[win])
        for source in named:
            if source != win:
                skipped[source] = f"same audio as {display_name(win)}"
    parts.sort(key=lambda r: (source_bytes(r["source"]), r["track_id"]))
    index_lines, track_lines = [], []
    for r in parts:
        rows = r.pop("rows")
        track_lines.append(json.dumps(r, sort_keys=True))
        if r["status"] != "done":
            skipped[r["source"]] = r["reason"]
        for row in rows:
            index_lines.append(json.dumps({
                "track_id": r["track_id"], "source": r["source"], "sha256": r["sha256"], "clip": row["clip"],
                "start_s": row["start_s"], "shard": r["shard"], "row": row["row"],
                # the clip's level (datasets segmented before it was recorded lack it)
                **({"peak_db": row["peak_db"]} if "peak_db" in row else {}),
            }, sort_keys=True))
    failures = {}
    for p in sorted((out / "failures").glob("*.json")):
        f = read_json(p)
        failures[f["source"]] = f.get("reason", "")
    atomic_write_text(out / "index.jsonl", "".join(line + "\n" for line in index_lines))
    atomic_write_text(out / "tracks.jsonl", "".join(line + "\n" for line in track_lines))
    report = {
        "tracks": sum(1 for r in parts if r["clips"] > 0),
        "clips": len(index_lines),
        "silent_clips": sum(r["silent_clips"] for r in parts),
        "audio_hours": round(sum(r["decoded_seconds"] for r in parts) / 3600, 4),
        "skipped": skipped,
        "failed": failures,
        "warnings": {r["source"]: r["warnings"] for r in parts if r.get("warnings")},
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="folder of audio files (searched recursively)")
    p.add_argument("--out", required=True, help="dataset folder")
    add_config_argument(p, "whose mel/segment sections to use")
    p.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    p.add_argument("--silence-dbfs", type=float, help="skip clips whose peak is below this (default -60)")
    p.add_argument("--decoder", choices=("auto", *DECODERS),
                   help="who decodes: auto (libsndfile, then PyAV, then the ffmpeg command line; default) or one")
    p.add_argument("--shard", help="I/N: process one slice (default: JOB_COMPLETION_INDEX / TECHNOGAN_SHARD_COUNT)")
    p.add_argument("--merge", action="store_true", help="only join the shards' parts into one index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    if args.merge:
        report = merge(args.out)
        print(f"merged {args.out}: {report['tracks']} tracks, {report['clips']} clips, "
              f"{len(report['skipped'])} skipped, {len(report['failed'])} failed files")
        return 0
    if not args.input:
        raise UserError("--input is required (or --merge)")
    cfg = load_config(args.config, {"segment.workers": args.workers, "segment.silence_dbfs": args.silence_dbfs,
                                     "segment.decoder": args.decoder})
    try:
        shard = parse_shard(args.shard)
    except ValueError as e:
        raise UserError(str(e)) from None
    summary = segment(args.input, args.out, cfg.mel, cfg.segment, shard, progress=not args.no_progress)
    print(summary.render())
    if shard.count > 1:
        print(f"shard {shard} done; after all shards: technogan segment --merge --out {args.out}")
    processed = sum(summary.by_status[s] for s in ("done", "already", "duplicate", "skipped"))
    if processed == 0:
        print("nothing could be processed", flush=True)
        return 1
    return 0
