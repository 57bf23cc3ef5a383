"""The training set: a torch Dataset over the memory-mapped float16 shards of a
segmented dataset (see ``pipeline.segment`` for the layout).

Clips are stored at analysis resolution [n_mels, n_frames]; a model's resolution
(64x64 by default, any power of two) is produced here by resizing at load time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import MelConfig
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text
from pipeline.mel import normalised_to_db, relative_to_peak, to_model_resolution
from pipeline.segment import STORE_DTYPE

log = logging.getLogger(__name__)


INDEX_KEYS = frozenset({"track_id", "source", "clip", "start_s", "shard", "row"})


def read_index(root: str | Path) -> list[dict]:
    """The merged clip index of a dataset folder, one dict per clip."""
    path = Path(root) / "index.jsonl"
    if not path.is_file():
        raise UserError(f"{root} has no index.jsonl: segment audio into it first "
                        "(technogan segment --input AUDIO --out DIR), or merge shards (--merge)")
    rows = []
    with open(path, "rb") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{path} line {no} is not JSON ({e}): rebuild the index with "
                                f"technogan segment --merge --out {root}") from None
            if not isinstance(row, dict) or not INDEX_KEYS <= row.keys():
                raise UserError(f"{path} line {no} is not a clip row (needs {', '.join(sorted(INDEX_KEYS))}): "
                                f"rebuild the index with technogan segment --merge --out {root}")
            rows.append(row)
    return rows


class MelDataset(Dataset):
    """Clips of a segmented dataset as float32 tensors [1, R, R] in [-1, 1].

    ``max_samples`` draws a deterministic subset (the same for the same seed and
    dataset), as the study's 260k/60k/30k runs. ``with_labels`` also returns the
    integer index of the clip's track (for in-project feature encoders).
    """

    def __init__(self, root: str | Path, resolution: int = 64, max_samples: int | None = None,
                 seed: int = 0, with_labels: bool = False):
        self.root = Path(root)
        self.mel_config = MelConfig.load(self.root / "mel_config.json")
        self.resolution = int(resolution)
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise UserError(f"resolution must be a power of two >= 8, got {resolution}")
        self.with_labels = with_labels
        rows = read_index(self.root)
        if not rows:
            raise UserError(f"{self.root} holds no clips (see its report.json for why)")
        self.shards = sorted({r["shard"] for r in rows})
        shard_no = {s: i for i, s in enumerate(self.shards)}
        self.track_ids = sorted({r["track_id"] for r in rows})
        track_no = {t: i for i, t in enumerate(self.track_ids)}
        self._shard = np.array([shard_no[r["shard"]] for r in rows], dtype=np.int32)
        self._row = np.array([r["row"] for r in rows], dtype=np.int64)
        self._track = np.array([track_no[r["track_id"]] for r in rows], dtype=np.int64)
        self._clip = np.array([r["clip"] for r in rows], dtype=np.int64)
        # each clip's level; None for a dataset segmented before segment recorded it
        self._peak = (np.array([r["peak_db"] for r in rows], dtype=np.float32)
                      if all("peak_db" in r for r in rows) else None)
        self.available = len(rows)
        if max_samples is not None and max_samples < self.available:
            rng = np.random.default_rng(seed)
            self.indices = np.sort(rng.choice(self.available, size=max_samples, replace=False))
        else:
            if max_samples is not None and max_samples > self.available:
                log.warning("max_samples %d exceeds the %d clips in %s: using all of them",
                            max_samples, self.available, self.root)
            self.indices = np.arange(self.available)
        self._check_shards(rows)
        self._maps: dict[int, np.ndarray] = {}

    def _check_shards(self, rows: list[dict]) -> None:
        """Every shard the index names exists and holds the rows it is asked for: a
        deleted or cut-short shard is a clear error now, not a crash mid-training."""
        row_bytes = int(np.prod(self.mel_config.shape)) * np.dtype(STORE_DTYPE).itemsize
        needed = np.zeros(len(self.shards), np.int64)
        np.maximum.at(needed, self._shard, self._row + 1)
        for shard, n in zip(self.shards, needed):
            if not isinstance(shard, str) or not shard.startswith("shards/") or ".." in Path(shard).parts:
                raise UserError(f"{self.root / 'index.jsonl'} names a shard outside {self.root / 'shards'}: "
                                f"{shard!r}")
            path = self.root / shard
            try:
                size = path.stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                raise UserError(f"{path} is missing but {self.root / 'index.jsonl'} lists clips in it: "
                                "segment the audio again into this folder") from None
            if size % row_bytes or size // row_bytes < n:
                raise UserError(f"{path} is truncated or damaged ({size} bytes; the index needs {n} clips of "
                                f"{row_bytes} bytes): delete it and its parts/ record, then segment again")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n_tracks(self) -> int:
        return len(self.track_ids)

    @property
    def labels(self) -> np.ndarray:
        """Track index of every item, in item order."""
        return self._track[self.indices]

    @property
    def peaks_db(self) -> np.ndarray | None:
        """Each item's peak level in dB [N] (what its stored dB are relative to), or None
        when the dataset was segmented before segment recorded it."""
        return None if self._peak is None else self._peak[self.indices]

    def successors(self) -> np.ndarray:
        """For each item, the item holding the next clip of its track (the 5 s that follow
        it), or -1 where that clip is not in this set (a track's end, a silent clip that was
        skipped, a ``max_samples`` subset without it)."""
        item_of = {(int(self._track[j]), int(self._clip[j])): i for i, j in enumerate(self.indices)}
        return np.array([item_of.get((int(self._track[j]), int(self._clip[j]) + 1), -1) for j in self.indices],
                        dtype=np.int64)

    def fingerprint(self) -> str:
        """Content hash of the index: names the exact data a run trained on."""
        return hashlib.sha256((self.root / "index.jsonl").read_bytes()).hexdigest()[:16]

    def bin_stats(self, resolution: int | None = None, max_clips: int = 20000,
                  chunk: int = 256) -> dict[str, list[float]]:
        """Per-row (mel bin) mean and standard deviation of this set's clips at ``resolution``
        (default: the dataset's), {"mean": [R], "std": [R]}, for per_bin normalisation.

        Computed over at most ``max_clips`` clips, evenly spaced through the set (the row
        statistics of 20,000 clips are as good as those of all of them), and cached in
        ``stats/bins-r<R>.json`` (``bins-r<R>-<subset>.json`` for a ``max_samples`` subset),
        valid while the index's fingerprint and the subset are unchanged. An unwritable
        dataset folder only costs the cache (a warning)."""
        r = int(resolution or self.resolution)
        use = np.unique(np.linspace(0, len(self) - 1, num=min(len(self), max_clips)).round().astype(np.int64))
        full = len(self.indices) == self.available
        subset = hashlib.sha256(self.indices.tobytes()).hexdigest()[:12]
        key = {"fingerprint": self.fingerprint(), "resolution": r, "subset": "all" if full else subset,
               "clips": int(len(use))}
        path = self.root / "stats" / (f"bins-r{r}.json" if full else f"bins-r{r}-{subset}.json")
        cached = _read_bin_stats(path, key)
        if cached is not None:
            return cached
        total = torch.zeros(r, dtype=torch.float64)
        squares = torch.zeros(r, dtype=torch.float64)
        for start in range(0, len(use), chunk):
            batch = torch.stack([self.stored(int(i)) for i in use[start:start + chunk]])  # [N, n_mels, n_frames]
            x = to_model_resolution(batch, r).double()  # [N, R, R]: rows are mel bins
            total += x.sum(dim=(0, 2))
            squares += (x * x).sum(dim=(0, 2))
        n = len(use) * r  # values per row
        mean = total / n
        std = (squares / n - mean * mean).clamp(min=0.0).sqrt()
        stats = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({**key, **stats}, indent=1))
        except OSError as e:
            log.warning("could not cache the per-bin statistics in %s (%s): computing them each run", path, e)
        return stats

    def _map(self, shard: int) -> np.ndarray:
        # opened lazily, per process: DataLoader workers each get their own maps
        m = self._maps.get(shard)
        if m is None:
            m = np.memmap(self.root / self.shards[shard], dtype=STORE_DTYPE, mode="r").reshape(
                -1, *self.mel_config.shape)
            self._maps[shard] = m
        return m

    def stored(self, i: int) -> torch.Tensor:
        """Item ``i`` at analysis resolution: float32 [n_mels, n_frames] in [-1, 1]."""
        j = self.indices[i]
        return torch.from_numpy(np.asarray(self._map(self._shard[j])[self._row[j]], dtype=np.float32))

    def __getitem__(self, i: int):
        x = to_model_resolution(self.stored(i)[None], self.resolution)  # [1, R, R]
        if self.with_labels:
            return x, int(self._track[self.indices[i]])
        return x

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}  # memmaps are reopened in each worker
        return state


def _read_bin_stats(path: Path, key: dict) -> dict[str, list[float]] | None:
    """The cached statistics when ``path`` holds them for exactly ``key``; None otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in key.items()):
        return None
    stats = {k: data.get(k) for k in ("mean", "std")}
    for v in stats.values():
        if not (isinstance(v, list) and len(v) == key["resolution"]
                and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
            return None
    return stats  # type: ignore[return-value]


def join_crop(first: torch.Tensor, second: torch.Tensor, first_peak_db: torch.Tensor, second_peak_db: torch.Tensor,
              offsets: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Stored clips [B, M, T] and the clips that follow them -> the clip-long windows
    starting ``offsets`` [B] frames into the first, as stored clips are: dB relative to the
    window's own peak, floored at -top_db, in [-1, 1].

    Both clips go back to absolute dB by their peaks [B] first, so a loud clip followed
    by a quiet one stays a step down, as it was in the track. Offset 0 is the first clip.
    """
    b, _, t = first.shape
    db = torch.cat([normalised_to_db(first.float(), cfg) + first_peak_db.float()[:, None, None],
                    normalised_to_db(second.float(), cfg) + second_peak_db.float()[:, None, None]], dim=-1)  # [B, M, 2T]
    frames = (offsets.long()[:, None] + torch.arange(t)).clamp_(max=2 * t - 1)  # [B, T]
    window = db.gather(-1, frames[:, None, :].expand(b, db.shape[1], t))  # [B, M, T]
    return relative_to_peak(window, cfg)[0]
