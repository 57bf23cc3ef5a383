"""The scrape manifest: append-only JSON lines, one per finished attempt on a video.

Format (documented in the README): every line is one JSON object with at least
``id``, ``status`` (``done`` | ``skipped`` | ``failed``) and ``ts`` (Unix seconds);
``done`` lines add ``path`` (relative to the output folder), ``bytes``, ``sha256``
and the decoded ``duration``; ``skipped`` and ``failed`` lines add ``reason`` (and
``error`` and ``permanent`` for failures). The state of a video is the fold of its
lines: the last line (by ``ts``) wins.

Writers never rewrite a manifest. An unsharded run appends to ``manifest.jsonl``;
shard I of N appends to ``manifest.shard-I-of-N.jsonl``, so the pods of an Indexed
Job sharing one volume never write the same file (O_APPEND is not atomic across
NFS clients). Each line goes out as one ``os.write`` on an ``O_APPEND`` descriptor
and is fsynced, and is kept under ``LINE_LIMIT`` bytes, so even two processes on
the same file interleave whole lines. ``read_manifest`` merges every
``manifest*.jsonl`` of the folder, so a later run with another shard count still
sees everything, and ignores a torn last line left by a power cut.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from pipeline.shard import Shard

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
LINE_LIMIT = 4000  # below PIPE_BUF (4096) and any filesystem's atomic append unit
_SHRINKABLE = ("error", "title", "uploader", "playlists")


def manifest_name(shard: Shard) -> str:
    """``manifest.jsonl`` for an unsharded run, ``manifest.shard-I-of-N.jsonl`` for a shard."""
    return MANIFEST if shard.count == 1 else f"manifest.shard-{shard.index}-of-{shard.count}.jsonl"


def encode_line(record: dict[str, Any]) -> bytes:
    """One JSON line under LINE_LIMIT bytes (long free-text fields are shortened first)."""
    rec = dict(record)
    data = (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    for key in _SHRINKABLE:
        if len(data) <= LINE_LIMIT:
            break
        if key in rec:
            rec[key] = rec[key][:3] + ["..."] if isinstance(rec[key], list) else str(rec[key])[:200]
            data = (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    if len(data) > LINE_LIMIT:
        raise ValueError(f"manifest line for {record.get('id')!r} is {len(data)} bytes even shortened")
    return data


class ManifestWriter:
    """Appends records to one manifest file; each record is one atomic ``os.write``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            # a torn last line (power cut): end it, so the next record starts a line of its own
            os.write(self._fd, b"\n")

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Stamp ``ts`` if missing, write the line, fsync; returns the record written."""
        record = {"ts": round(time.time(), 6), **record}
        data = encode_line(record)
        n = os.write(self._fd, data)
        if n != len(data):  # a regular file only short-writes when the disk is full
            raise OSError(f"{self.path}: short write ({n} of {len(data)} bytes); is the disk full?")
        os.fsync(self._fd)
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def manifest_files(out: str | os.PathLike) -> list[Path]:
    root = Path(out)
    return sorted(p for p in root.glob("manifest*.jsonl") if p.is_file())


def iter_records(out: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every well-formed line of every manifest in ``out``, in (ts, file, line) order."""
    rows: list[tuple[float, int, int, dict[str, Any]]] = []
    for fi, path in enumerate(manifest_files(out)):
        with open(path, "rb") as f:
            for li, raw in enumerate(f):
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict) or "id" not in rec or "status" not in rec:
                        raise ValueError("not a manifest record")
                except ValueError:
                    log.warning("%s:%d: ignoring malformed manifest line", path, li + 1)
                    continue
                rows.append((float(rec.get("ts", 0.0)), fi, li, rec))
    rows.sort(key=lambda r: r[:3])
    for *_, rec in rows:
        yield rec


def read_manifest(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The state: video id -> its last record."""
    state: dict[str, dict[str, Any]] = {}
    for rec in iter_records(out):
        state[rec["id"]] = rec
    return state
