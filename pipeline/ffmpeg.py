"""The ffmpeg command-line tools, as `segment` and `scrape` use them: where the
binaries are, what ffprobe says about a file (its JSON, not ffmpeg's prose), and
the one line of ffmpeg's stderr that says what went wrong.

In-process decoding lives in ``pipeline.decode``; the command line is its fallback.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path


def ffmpeg_binary() -> str:
    """The ffmpeg executable (pydub's lookup: PATH, then the usual names)."""
    from pydub.utils import get_encoder_name

    return get_encoder_name()


def ffprobe_binary() -> str:
    from pydub.utils import get_prober_name

    return get_prober_name()


def empty_info() -> dict:
    """An input's description before (or without) anything read it."""
    return {"codec": "?", "channels": 0, "sample_rate": 0, "declared_seconds": float("nan")}


def _number(value, cast=float, default=None):
    try:
        v = cast(value)
    except (TypeError, ValueError):
        return default
    return v if not (isinstance(v, float) and not math.isfinite(v)) else default


def probe(path: str | os.PathLike) -> dict:
    """Codec, channels, sample rate and declared duration of the first audio stream,
    from ``ffprobe -print_format json``. A file ffprobe cannot read gives
    ``{"codec": "?", "channels": 0, "sample_rate": 0, "declared_seconds": nan, "error": why}``."""
    info = empty_info()
    r = subprocess.run([ffprobe_binary(), "-v", "error", "-print_format", "json", "-show_format",
                        "-show_streams", "-select_streams", "a:0", os.fsdecode(Path(path))],
                       capture_output=True, stdin=subprocess.DEVNULL)
    err = r.stderr.decode("utf-8", "replace")
    try:
        doc = json.loads(r.stdout.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError:
        doc = {}
    streams = doc.get("streams") or []
    if r.returncode != 0 or not streams:
        info["error"] = ffmpeg_complaint(err) if err.strip() else "no audio stream"
        return info
    s = streams[0]
    duration = _number(s.get("duration")) or _number((doc.get("format") or {}).get("duration"))
    info.update(codec=s.get("codec_name", "?"), channels=_number(s.get("channels"), int, 0),
                sample_rate=_number(s.get("sample_rate"), int, 0),
                declared_seconds=duration if duration is not None else float("nan"))
    return info


_CHANNEL_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "4.1": 5, "5.0": 5,
                    "5.1": 6, "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8}


def parse_ffmpeg_input(stderr: str) -> dict:
    """Codec, channels, sample rate and declared duration of the first audio stream,
    from ffmpeg's ``-v info`` description of its input. For a caller that already runs
    ffmpeg over the file and wants no second process; otherwise prefer ``probe``."""
    info = empty_info()
    if m := re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", stderr):
        h, mi, sec = m.groups()
        info["declared_seconds"] = int(h) * 3600 + int(mi) * 60 + float(sec)
    if m := re.search(r"Stream #0:\d+.*?: Audio: ([^,\s]+)[^,]*, (\d+) Hz, ([^,]+)", stderr):
        codec, rate, layout = m.groups()
        layout = layout.strip().split("(")[0]
        n = re.match(r"(\d+) channels", layout)
        info.update(codec=codec, sample_rate=int(rate),
                    channels=int(n.group(1)) if n else _CHANNEL_LAYOUTS.get(layout, 0))
    return info


_COMPLAINT = re.compile(r"could not|invalid|failed|error|no such|matches no streams|does not contain|unsupported",
                        re.IGNORECASE)


def ffmpeg_complaint(stderr: str) -> str:
    """The first line of ffmpeg's stderr that says what is wrong, without the [demuxer @ 0x..] prefix."""
    lines = [re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*", "", ln.strip()) for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if _COMPLAINT.search(ln):
            return ln
    return lines[-1] if lines else "no message"
