"""The download path every backend ends in: stream to a temporary file, verify, rename.

* ``HttpFetcher.fetch`` streams an ``AudioSource.url`` into a ``.tmp-`` file beside
  the final one, with per-request (connect, read) timeouts and an overall deadline
  per attempt (``download_timeout``: a server that sends a byte now and then never
  trips the read timeout). It asks for the body in
  HTTP Range chunks (``chunk_bytes``; servers that ignore Range get one request), and
  a retry after a dropped connection or a stall continues from the bytes already on
  disk instead of starting over.
* ``verify_audio`` checks the file really decodes (one ffmpeg run decodes the whole
  audio stream, ``-xerror`` fails on the first corrupt frame), takes the duration
  from what was decoded and compares it with the listed duration, which catches
  bodies truncated by a lying server.
* ``RetryPolicy`` is exponential backoff with full jitter, honouring Retry-After.

Only a verified file is renamed to its final name, so a killed run never leaves a
partial file where ``technogan segment`` would read it (it skips ``.tmp-`` names).
"""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TypeVar

import requests
import urllib3

from pipeline.config import ScrapeConfig
from pipeline.scrape.backends import AudioSource, TransientError, http_error, short_text

T = TypeVar("T")
log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_BLOCK = 1 << 16


class VerifyError(TransientError):
    """The downloaded bytes are not the audio they should be (corrupt, truncated):
    the file is deleted and the download retried from scratch."""


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; ``sleep`` and ``rng`` are injectable for tests."""

    retries: int = 4
    base: float = 2.0
    cap: float = 120.0
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_config(cls, c: ScrapeConfig, rng: random.Random | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> "RetryPolicy":
        return cls(retries=c.retries, base=c.backoff_seconds, cap=c.backoff_max_seconds,
                   rng=rng or random.Random(), sleep=sleep)

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        # full jitter: uniform in [0, base * 2^(attempt-1)] spreads retrying pods apart
        d = self.rng.uniform(0.0, min(self.cap, self.base * 2 ** (attempt - 1)))
        if retry_after is not None:
            d = max(d, min(self.cap, retry_after))
        return d

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``, retrying TransientErrors; PermanentErrors and the last TransientError propagate."""
        for attempt in range(1, self.retries + 2):
            try:
                return fn()
            except TransientError as e:
                if attempt > self.retries:
                    raise
                d = self.delay(attempt, e.retry_after)
                log.info("%s: %s (%s); retry %d/%d in %.1f s", what, e.reason, short_text(e, 120), attempt, self.retries, d)
                self.sleep(d)
        raise AssertionError("unreachable")


def _retry_after(resp: requests.Response) -> Optional[float]:
    v = resp.headers.get("Retry-After", "")
    return float(v) if v.strip().isdigit() else None


class HttpFetcher:
    """Streams a URL to a file with timeouts and Range resumption. One ``fetch`` call is one
    attempt; the caller's RetryPolicy decides whether to call again (the partial file stays)."""

    def __init__(self, config: ScrapeConfig, session: requests.Session | None = None):
        self.config = config
        self.session = session or requests.Session()

    def fetch(self, source: AudioSource, path: Path, progress: Callable[[int], None] | None = None) -> int:
        """Download ``source.url`` into ``path``, continuing from its current size. Returns its final size."""
        assert source.url is not None
        timeout = (self.config.connect_timeout, self.config.read_timeout)
        deadline = time.monotonic() + self.config.download_timeout
        have = path.stat().st_size if path.exists() else 0
        total = source.size
        chunk = self.config.chunk_bytes
        while total is None or have < total:
            headers = dict(source.headers)
            end = ""
            if chunk:
                last = have + chunk - 1
                end = str(min(last, total - 1) if total is not None else last)
            if have or end:
                headers["Range"] = f"bytes={have}-{end}"
            try:
                resp = self.session.get(source.url, headers=headers, stream=True, timeout=timeout)
            except requests.Timeout as e:
                raise TransientError("timeout", short_text(e)) from e
            except requests.RequestException as e:
                raise TransientError("connection", short_text(e)) from e
            with resp:
                _check_deadline(deadline, self.config.download_timeout, have)
                if resp.status_code == 416 and total is not None and have >= total:
                    break
                if resp.status_code >= 400:
                    raise http_error(resp.status_code, f"HTTP {resp.status_code} for {source.url}", _retry_after(resp))
                if resp.status_code == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != have:
                        raise TransientError("bad_range", f"asked from byte {have}, got Content-Range "
                                                          f"{resp.headers.get('Content-Range')!r}")
                    if m.group(3) != "*":
                        total = int(m.group(3))
                    mode = "ab"
                else:
                    # 200: the server sent the whole body from byte 0 (no Range support)
                    have, mode = 0, "wb"
                expected = resp.headers.get("Content-Length")
                got = 0
                try:
                    with open(path, mode) as f:
                        for block in _blocks(resp):
                            f.write(block)
                            got += len(block)
                            if progress:
                                progress(len(block))
                            _check_deadline(deadline, self.config.download_timeout, have + got)
                except requests.Timeout as e:  # stalled mid-body: keep what we have, resume later
                    raise TransientError("timeout", short_text(e)) from e
                except urllib3.exceptions.ReadTimeoutError as e:
                    raise TransientError("timeout", short_text(e)) from e
                except (requests.RequestException, ConnectionError, urllib3.exceptions.HTTPError) as e:
                    # requests reports a read timeout inside the body as a ConnectionError
                    reason = "timeout" if "timed out" in str(e).lower() else "connection"
                    raise TransientError(reason, short_text(e)) from e
                if expected is not None and got < int(expected):
                    raise TransientError("truncated", f"body ended after {got} of {expected} bytes")
                have += got
                if resp.status_code == 200:
                    total = have if total is None or total == have else total
                    if total != have:
                        raise TransientError("truncated", f"got {have} bytes, expected {total}")
                    break
                if got == 0:
                    raise TransientError("empty_body", f"no bytes at offset {have}")
        return have


def _check_deadline(deadline: float, limit: float, have: int) -> None:
    if time.monotonic() > deadline:
        # transient: the bytes so far stay and the next attempt (its own deadline) continues them
        raise TransientError("too_slow", f"download took over download_timeout={limit:g} s "
                                         f"({have} bytes so far); given up on")


def _blocks(resp: requests.Response):
    """The body as it arrives: whatever one socket read returns (at most _BLOCK bytes), so
    the caller checks its deadline between reads even when the server trickles; a
    full-block read would wait for 64 KiB of a trickle."""
    raw = resp.raw
    if not hasattr(raw, "read1"):
        yield from resp.iter_content(_BLOCK)
        return
    while True:
        block = raw.read1(_BLOCK, decode_content=True)
        if not block:
            return
        yield block


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class AudioCheck:
    duration: float
    codec: str


def _ffmpeg() -> str:
    from pydub.utils import get_encoder_name

    return get_encoder_name()


def verify_audio(path: Path, listed_duration: Optional[float], tolerance: float) -> AudioCheck:
    """Raise VerifyError unless ``path`` fully decodes and its duration matches the listing."""
    from pipeline.ffmpeg import ffmpeg_complaint, parse_ffmpeg_input

    # one ffmpeg run: it describes the input on stderr (codec) and decodes everything,
    # failing on the first corrupt frame; the duration is what was actually decoded
    # (a header still claims the full length when the body is cut short)
    r = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", "-xerror",
                        "-i", str(path), "-map", "0:a:0", "-f", "null", "-progress", "pipe:1", "-"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise VerifyError("corrupt", f"ffmpeg cannot decode it: {short_text(ffmpeg_complaint(r.stderr), 200)}")
    times = re.findall(r"^out_time_us=(\d+)$", r.stdout, flags=re.M)
    if not times:
        raise VerifyError("corrupt", "ffmpeg decoded no audio")
    duration = int(times[-1]) / 1e6
    if listed_duration:
        allowed = max(2.0, tolerance * listed_duration)
        if abs(duration - listed_duration) > allowed:
            raise VerifyError("duration_mismatch",
                              f"decodes to {duration:.1f} s but the listing says {listed_duration:.1f} s")
    return AudioCheck(duration=duration, codec=parse_ffmpeg_input(r.stderr)["codec"])


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())

