"""Sharding for Indexed Jobs: ``--shard I/N`` or ``JOB_COMPLETION_INDEX`` + a shard count.

Items are assigned by a hash of a stable key (a relative path, a video id), so the
slice an index gets does not change when other items are added or reordered, and
N pods together cover every item exactly once.
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping
from dataclasses import dataclass

SHARD_COUNT_ENV = "TECHNOGAN_SHARD_COUNT"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1}, got {self.index}")

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    # surrogateescape: a file name that is not UTF-8 reaches us as lone surrogates (os.fsdecode)
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """``"I/N"`` -> Shard. Without text, use JOB_COMPLETION_INDEX and TECHNOGAN_SHARD_COUNT."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if text:
        try:
            i, n = text.split("/")
            return Shard(int(i), int(n))
        except ValueError as e:
            raise ValueError(f"--shard must look like I/N with 0 <= I < N, got {text!r} ({e})") from None
    if "JOB_COMPLETION_INDEX" in environ:
        try:
            count = int(environ.get(SHARD_COUNT_ENV, "0"))
            index = int(environ["JOB_COMPLETION_INDEX"])
        except ValueError as e:
            raise ValueError(f"bad JOB_COMPLETION_INDEX / {SHARD_COUNT_ENV}: {e}") from None
        if count < 1:
            raise ValueError(f"JOB_COMPLETION_INDEX is set but {SHARD_COUNT_ENV} is not (the Job's completions)")
        return Shard(index, count)
    return Shard()
