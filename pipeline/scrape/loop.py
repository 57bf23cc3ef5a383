"""The resumable scrape loop: playlists -> listing -> filter, dedupe, shard -> download.

``scrape(entries, out, backend, config, shard)`` is the whole stage; the CLI in
``pipeline.scrape.cli`` is a thin shell over it. Output layout, which
``technogan segment --input OUT`` reads unchanged::

    OUT/audio/<video_id>.<ext>          verified audio (m4a, webm, opus, mp3, ...)
    OUT/audio/.tmp-<video_id>.part      a download in progress (segment skips it)
    OUT/manifest*.jsonl                 see pipeline.scrape.manifest

Idempotent: a video whose ``done`` record points at an existing file of the
recorded size is not fetched again; a permanent failure is not retried (unless
``retry_failed``); skipped and transiently failed videos are looked at again.
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, TypeGuard

from tqdm import tqdm

from pipeline.config import ScrapeConfig
from pipeline.fsutil import TMP_PREFIX, sha256_file
from pipeline.scrape.backends import Backend, PermanentError, ScrapeError, TransientError, VideoInfo, short_text
from pipeline.scrape.download import HttpFetcher, RetryPolicy, fsync_file, verify_audio
from pipeline.scrape.manifest import ManifestWriter, manifest_name, read_manifest
from pipeline.scrape.playlists import PlaylistEntry, canonical_url, check_video_id, parse_youtube_url
from pipeline.shard import Shard

log = logging.getLogger(__name__)

AUDIO_SUBDIR = "audio"
PART_SUFFIX = ".part"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def temp_path(audio_dir: Path, video_id: str) -> Path:
    """Where a video downloads before it is verified; segment skips ``.tmp-`` names.
    ValueError for anything but a checked video id: no name ever leaves ``audio_dir``."""
    return audio_dir / f"{TMP_PREFIX}{check_video_id(video_id)}{PART_SUFFIX}"


def _temp_owner(path: Path) -> Optional[str]:
    name = path.name
    if not (name.startswith(TMP_PREFIX) and name.endswith(PART_SUFFIX)):
        return None
    return name[len(TMP_PREFIX): -len(PART_SUFFIX)]


# ----------------------------------------------------------------------------- planning


@dataclass
class Candidate:
    """A unique video and what the playlists that list it say about it."""

    video: VideoInfo
    playlist: str  # the first playlist that accepted it (or listed it, when none did)
    label: Optional[str]
    playlists: list[str]
    min_duration: float
    max_duration: float
    skip_reason: Optional[str] = None  # too_short / too_long when no playlist accepts it


@dataclass
class Plan:
    candidates: list[Candidate]  # every unique listed video, in listing order
    listing_failures: dict[str, str] = field(default_factory=dict)  # playlist url -> reason
    listed: int = 0  # videos listed, duplicates included
    invalid_ids: list[tuple[str, str]] = field(default_factory=list)  # (playlist url, repr of the id) refused

    def eligible(self) -> list[Candidate]:
        return [c for c in self.candidates if c.skip_reason is None]


def _duration_verdict(duration: Optional[float], lo: float, hi: float) -> Optional[str]:
    if duration is None:
        return None  # unknown: decided after download from the decoded duration
    if duration < lo:
        return "too_short"
    if duration > hi:
        return "too_long"
    return None


def plan(entries: list[PlaylistEntry], backend: Backend, config: ScrapeConfig, retry: RetryPolicy,
         max_tracks: Optional[int] = None) -> Plan:
    """List every entry (with retries), apply duration filters and per-entry ``max_tracks``,
    dedupe by video id (a video any of its playlists accepts is eligible) and cap the
    eligible list at ``max_tracks``. Every shard computes the same plan."""
    by_id: dict[str, Candidate] = {}
    order: list[str] = []
    failures: dict[str, str] = {}
    invalid: list[tuple[str, str]] = []
    listed = 0
    for entry in tqdm(entries, desc="listing", unit="playlist", disable=len(entries) < 2):
        try:
            # the backend (yt-dlp) gets a URL rebuilt from the checked id, nothing else of the input
            url = canonical_url(parse_youtube_url(entry.url))
        except ValueError as e:
            log.warning("cannot list %s: %s", entry.url, e)
            failures[entry.url] = "invalid_url"
            continue
        try:
            videos = retry.call(functools.partial(backend.list_videos, url), f"list {entry.url}")
        except ScrapeError as e:
            log.warning("cannot list %s: %s (%s)", entry.url, e.reason, short_text(e, 200))
            failures[entry.url] = e.reason if isinstance(e, PermanentError) else f"{e.reason}, transient"
            continue
        listed += len(videos)
        lo, hi = entry.durations(config.min_duration, config.max_duration)
        taken = 0
        for v in videos:
            if entry.max_tracks is not None and taken >= entry.max_tracks:
                break
            try:
                check_video_id(v.id)
            except ValueError as e:
                log.warning("%s listed an unusable video: %s; skipped", entry.url, e)
                invalid.append((entry.url, repr(v.id)))
                continue
            v = dataclasses.replace(v, url=None)  # its watch URL is rebuilt from the checked id
            verdict = _duration_verdict(v.duration, lo, hi)
            old = by_id.get(v.id)
            if old is not None:
                if entry.url not in old.playlists:
                    old.playlists.append(entry.url)
                if old.skip_reason is not None and verdict is None:
                    # a later playlist accepts what an earlier one filtered out
                    old.playlist, old.label, old.min_duration, old.max_duration = entry.url, entry.label, lo, hi
                    old.skip_reason = None
                    taken += 1
                continue
            by_id[v.id] = Candidate(v, entry.url, entry.label, [entry.url], lo, hi, verdict)
            order.append(v.id)
            if verdict is None:
                taken += 1
    candidates = [by_id[i] for i in order]
    if max_tracks is not None:
        kept = 0
        for c in candidates:
            if c.skip_reason is None:
                kept += 1
                if kept > max_tracks:
                    c.skip_reason = "max_tracks"
    return Plan(candidates, failures, listed, invalid)


# ----------------------------------------------------------------------------- summary


@dataclass
class Summary:
    listed: int = 0  # videos listed, duplicates included
    unique: int = 0
    in_shard: int = 0
    downloaded: int = 0  # fetched by this run
    already_done: int = 0  # done by an earlier run
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    failed: Counter = field(default_factory=Counter)  # reason -> count
    failed_ids: dict[str, str] = field(default_factory=dict)  # video id -> "reason: error"
    listing_failures: dict[str, str] = field(default_factory=dict)
    retryable: int = 0  # failures (videos and listings) a later run may fix: transient errors
    seconds: float = 0.0  # audio in done files of this shard
    bytes: int = 0
    dry_run: bool = False

    @property
    def done(self) -> int:
        return self.downloaded + self.already_done

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values()) + len(self.listing_failures)

    @property
    def failure_share(self) -> float:
        attempted = self.done + self.n_failed
        return self.n_failed / attempted if attempted else 0.0

    def ok(self, max_failure_share: float) -> bool:
        if self.listing_failures and self.unique == 0:
            return False  # nothing could even be listed
        return self.failure_share <= max_failure_share

    def exit_status(self, max_failure_share: float) -> int:
        """0 within the allowed share of failures; above it 1 when some failures were transient
        (a retried pod may fix them), 3 when all were permanent (retrying cannot help)."""
        if self.ok(max_failure_share):
            return 0
        return 1 if self.retryable or not self.n_failed else 3

    def format(self, max_failure_share: float) -> str:
        lines = [
            f"videos listed: {self.listed} ({self.unique} unique, {self.in_shard} in this shard)",
            f"done: {self.done} ({self.downloaded} downloaded now, {self.already_done} already there)",
            "skipped: " + (", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "0"),
            "failed: " + (", ".join(f"{r} {n}" for r, n in sorted(self.failed.items())) or "0"),
        ]
        if self.listing_failures:
            lines.append("playlists not listed: " + ", ".join(f"{u} ({r})" for u, r in self.listing_failures.items()))
        lines.append(f"audio: {self.seconds / 3600:.2f} h, {self.bytes / 1e6:.1f} MB")
        lines.append(f"failure share: {self.failure_share:.1%} (allowed {max_failure_share:.1%}; "
                     f"{self.retryable} of {self.n_failed} failures may pass on a retry)")
        for vid, why in list(self.failed_ids.items())[:20]:
            lines.append(f"  failed {vid}: {why}")
        if len(self.failed_ids) > 20:
            lines.append(f"  ... and {len(self.failed_ids) - 20} more (see the manifest)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- one video


def _record_base(c: Candidate, backend: Backend, shard: Shard) -> dict[str, Any]:
    v = c.video
    return {"id": v.id, "playlist": c.playlist, "playlists": list(c.playlists), "label": c.label, "title": v.title,
            "uploader": v.uploader, "listed_duration": v.duration, "backend": backend.name, "shard": str(shard)}


def download_one(c: Candidate, audio_dir: Path, backend: Backend, fetcher: HttpFetcher, retry: RetryPolicy,
                 config: ScrapeConfig, out: Path, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fetch, verify and rename one video; returns the manifest record (done / skipped / failed).
    Transient errors are retried with backoff; the temporary file is gone afterwards either way."""
    v = c.video
    tmp = temp_path(audio_dir, v.id)
    started = _now()
    attempts = 0
    chosen: dict[str, Any] = {}

    def attempt() -> Path:
        nonlocal attempts
        attempts += 1
        source = backend.resolve_audio(v)
        stream_key = (source.ext, source.format_note, source.size)
        if chosen.get("key", stream_key) != stream_key:
            tmp.unlink(missing_ok=True)  # another stream than last attempt's: its bytes do not continue ours
        chosen["key"], chosen["ext"], chosen["format"] = stream_key, source.ext, source.format_note
        if source.url is not None:
            fetcher.fetch(source, tmp, progress)  # continues a partial file from an earlier attempt
        else:
            assert source.fetch is not None  # a source without a URL is fetched by its backend
            tmp.unlink(missing_ok=True)
            source.fetch(tmp)
        try:
            check = verify_audio(tmp, v.duration, config.duration_tolerance)
        except TransientError:
            tmp.unlink(missing_ok=True)  # corrupt bytes must not be resumed from
            raise
        chosen["duration"], chosen["codec"] = check.duration, check.codec
        return tmp

    try:
        retry.call(attempt, v.id)
    except ScrapeError as e:
        tmp.unlink(missing_ok=True)
        return {"status": "failed", "reason": e.reason, "error": short_text(e, 500),
                "permanent": isinstance(e, PermanentError), "attempts": attempts, "started_at": started,
                "finished_at": _now()}
    except BaseException:
        tmp.unlink(missing_ok=True)  # interrupted (SIGTERM, Ctrl-C): no partial file left behind
        raise
    duration = chosen["duration"]
    verdict = _duration_verdict(duration, c.min_duration, c.max_duration) if v.duration is None else None
    if verdict is not None:
        tmp.unlink(missing_ok=True)
        return {"status": "skipped", "reason": verdict, "duration": duration, "attempts": attempts,
                "started_at": started, "finished_at": _now()}
    final = audio_dir / f"{v.id}.{chosen['ext']}"
    sha = sha256_file(tmp)
    size = tmp.stat().st_size
    fsync_file(tmp)
    tmp.replace(final)  # atomic: the final name only ever holds a verified file
    return {"status": "done", "path": final.relative_to(out).as_posix(), "bytes": size, "sha256": sha,
            "duration": round(duration, 3), "codec": chosen["codec"], "format": chosen["format"],
            "attempts": attempts, "started_at": started, "finished_at": _now()}


def _recover(c: Candidate, audio_dir: Path, out: Path, config: ScrapeConfig) -> Optional[dict[str, Any]]:
    """A verified file whose manifest line was lost (killed between rename and append)."""
    for p in sorted(audio_dir.glob(f"{c.video.id}.*")):
        try:
            check = verify_audio(p, c.video.duration, config.duration_tolerance)
        except TransientError:
            continue
        return {"status": "done", "path": p.relative_to(out).as_posix(), "bytes": p.stat().st_size,
                "sha256": sha256_file(p), "duration": round(check.duration, 3), "codec": check.codec,
                "attempts": 0, "recovered": True, "finished_at": _now()}
    return None


def _is_done(prev: Optional[dict[str, Any]], out: Path) -> TypeGuard[dict[str, Any]]:
    if not prev or prev.get("status") != "done" or not prev.get("path"):
        return False
    p = out / prev["path"]
    return p.is_file() and p.stat().st_size == prev.get("bytes")


# ----------------------------------------------------------------------------- the stage


def scrape(entries: list[PlaylistEntry], out: str | Path, backend: Backend, config: ScrapeConfig | None = None,
           shard: Shard = Shard(),  # noqa: B008 (a frozen dataclass: one shared default is safe)
           max_tracks: Optional[int] = None, dry_run: bool = False, retry_failed: bool = False,
           retry: RetryPolicy | None = None, fetcher: HttpFetcher | None = None, progress: bool = True) -> Summary:
    """Scrape this shard's slice of the playlists into ``out``; returns the summary.
    Never raises for a single video's failure: it is recorded in the manifest and counted."""
    config = config or ScrapeConfig()
    out = Path(out)
    retry = retry or RetryPolicy.from_config(config)
    fetcher = fetcher or HttpFetcher(config)
    p = plan(entries, backend, config, retry, max_tracks)
    mine = [c for c in p.candidates if shard.owns(c.video.id)]
    s = Summary(listed=p.listed, unique=len(p.candidates), in_shard=len(mine), listing_failures=dict(p.listing_failures),
                retryable=sum(1 for r in p.listing_failures.values() if r.endswith("transient")), dry_run=dry_run)
    for playlist, bad in p.invalid_ids:
        if shard.owns(bad):  # every shard plans the same: count each once over the shards
            s.failed["invalid_id"] += 1
            s.failed_ids[bad] = f"invalid_id: listed by {playlist}, not a YouTube video id (refused)"
    state = read_manifest(out)
    audio_dir = out / AUDIO_SUBDIR

    if dry_run:
        for c in mine:
            if _is_done(state.get(c.video.id), out):
                s.already_done += 1
                s.seconds += float(state[c.video.id].get("duration") or 0)
            elif c.skip_reason:
                s.skipped[c.skip_reason] += 1
            else:
                s.seconds += c.video.duration or 0.0
        return s

    audio_dir.mkdir(parents=True, exist_ok=True)
    # temps of this shard's videos are leftovers of a killed run; other shards' may be live
    for t in audio_dir.glob(f"{TMP_PREFIX}*{PART_SUFFIX}"):
        owner = _temp_owner(t)
        if owner is not None and shard.owns(owner):
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
                log.info("removed %s left by an interrupted run", t.name)

    fetched_any = False
    with ManifestWriter(out / manifest_name(shard)) as writer, \
            tqdm(total=len(mine), desc=f"scrape {shard}", unit="video", disable=not progress) as bar, \
            tqdm(desc="bytes", unit="B", unit_scale=True, leave=False, disable=not progress) as bytes_bar:
        for c in mine:
            vid = c.video.id
            prev = state.get(vid)
            base = _record_base(c, backend, shard)
            if _is_done(prev, out):
                # done stays done, even if today's filters would skip it: nothing is lost
                s.already_done += 1
                s.seconds += float(prev.get("duration") or 0)
                s.bytes += int(prev.get("bytes") or 0)
            elif c.skip_reason:
                s.skipped[c.skip_reason] += 1
                # a cap of this run is not a property of the video: not worth a manifest line
                if c.skip_reason != "max_tracks" and (not prev or prev.get("status") != "skipped"
                                                      or prev.get("reason") != c.skip_reason):
                    writer.append({**base, "status": "skipped", "reason": c.skip_reason})
            elif prev and prev.get("status") == "failed" and prev.get("permanent") and not retry_failed:
                s.failed[prev.get("reason", "error")] += 1
                s.failed_ids[vid] = f"{prev.get('reason')}: {prev.get('error', '')} (earlier run; --retry-failed to retry)"
            elif c.video.unavailable:
                writer.append({**base, "status": "failed", "reason": c.video.unavailable, "permanent": True,
                               "error": "unavailable at listing time", "attempts": 0})
                s.failed[c.video.unavailable] += 1
                s.failed_ids[vid] = c.video.unavailable
            else:
                rec = _recover(c, audio_dir, out, config)
                if rec is None:
                    if fetched_any and config.pause_seconds:
                        retry.sleep(config.pause_seconds)  # network manners between two downloads
                    fetched_any = True
                    rec = download_one(c, audio_dir, backend, fetcher, retry, config, out, bytes_bar.update)
                rec = writer.append({**base, **rec})
                if rec["status"] == "done":
                    s.downloaded += 0 if rec.get("recovered") else 1
                    s.already_done += 1 if rec.get("recovered") else 0
                    s.seconds += rec["duration"]
                    s.bytes += rec["bytes"]
                elif rec["status"] == "skipped":
                    s.skipped[rec["reason"]] += 1
                else:
                    s.failed[rec["reason"]] += 1
                    s.retryable += 0 if rec.get("permanent") else 1
                    s.failed_ids[vid] = f"{rec['reason']}: {rec.get('error', '')}"
            bar.update(1)
            bar.set_postfix(done=s.done, failed=sum(s.failed.values()), refresh=False)
    return s
