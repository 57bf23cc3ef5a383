"""Resumable, rank-sharded batches of a MelDataset.

Batch order is a pure function of (seed, epoch, rank, world size): each epoch is one
``DistributedSampler`` permutation (with world size 1 outside torchrun), cut into full
batches. A position (epoch, batch index) is therefore enough to continue exactly where
a checkpoint stopped, which is what makes ``--resume`` bit-exact.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Iterator, Sized, cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from pipeline.dataset import MelDataset, join_crop
from pipeline.errors import UserError
from pipeline.mel import to_model_resolution

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 8 << 30  # above this the set streams from the memory-mapped shards instead


class _Indices(Dataset):
    """Only its length matters: DistributedSampler permutes range(n)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def cache_dataset(dataset: Dataset, workers: int = 0, progress: bool = True) -> torch.Tensor:
    """Every item resized once, stacked [N, 1, R, R] float32: resizing per step would cost
    more than a small GAN's step on a laptop."""
    loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    parts = [b for b in tqdm(loader, desc="caching clips", unit="batch", disable=not progress, leave=False)]
    return torch.cat(parts)  # [N, 1, R, R]


class RandomWindows(Dataset):
    """A MelDataset's items as clip-long windows at random starts (``data.crop: random``):
    item i of epoch e is read from a start drawn in clip i, running on into the clip that
    follows it in its track (``join_crop``), so the critic sees each 5 s at 216 offsets
    instead of the same cut every epoch. An item without a next clip stays as stored.

    The starts of an epoch are a pure function of (seed, epoch), so a resume reads the
    same windows. Items are [1, R, R] like the dataset's; ``batch`` makes many at once
    from any store of the stored clips (a cache in memory, or the shards).
    """

    def __init__(self, dataset: MelDataset, seed: int):
        peaks = dataset.peaks_db
        if peaks is None:
            raise UserError(f"data.crop: random needs each clip's peak level, which {dataset.root} does not record "
                            "(segmented before it was): run technogan segment again with the same --input "
                            "and --out (it redoes the older records), or set data.crop: fixed")
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.next = torch.from_numpy(dataset.successors())  # [N], -1: no next clip
        self.peaks = torch.from_numpy(peaks)  # [N] dB
        self.frames = dataset.mel_config.n_frames
        self._starts: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def starts(self, epoch: int) -> torch.Tensor:
        """Every item's window start in ``epoch``, in stored frames [N]."""
        if self._starts is None or self._starts[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            drawn = torch.randint(0, self.frames, (len(self),), generator=g)
            self._starts = (epoch, torch.where(self.next >= 0, drawn, 0))
        return self._starts[1]

    def batch(self, ix: torch.Tensor, epoch: int, stored: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Items ``ix`` [B] of ``epoch`` [B, 1, R, R]; ``stored(ix)`` gives stored clips [B, M, T]."""
        nxt = self.next[ix]
        nxt = torch.where(nxt >= 0, nxt, ix)  # no next clip: start 0 never reads it
        windows = join_crop(stored(ix), stored(nxt), self.peaks[ix], self.peaks[nxt], self.starts(epoch)[ix],
                            self.dataset.mel_config)  # [B, M, T]
        return to_model_resolution(windows[:, None], self.dataset.resolution)  # [B, 1, R, R]

    def stored(self, ix: torch.Tensor) -> torch.Tensor:
        """Stored clips [B, M, T] read from the shards."""
        return torch.stack([self.dataset.stored(int(i)) for i in ix])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch(torch.tensor([i]), self.epoch, self.stored)[0]


def _cache_stored(dataset: MelDataset, progress: bool = True) -> torch.Tensor:
    """Every stored clip [N, M, T] as float16, as the shards hold them."""
    return torch.stack([dataset.stored(i).half() for i in
                        tqdm(range(len(dataset)), desc="caching clips", unit="clip", disable=not progress, leave=False)])


class BatchStream:
    """Full batches of real mels, epoch after epoch, from a given position."""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0, world: int = 1,
                 cache: bool = True, workers: int = 0, pin_memory: bool = False, progress: bool = True):
        self.dataset = dataset
        n_clips = len(cast(Sized, dataset))
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.workers = workers
        self.pin_memory = pin_memory
        self.sampler: DistributedSampler[int] = DistributedSampler(_Indices(n_clips), num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"the training set has {n_clips} clips: fewer than batch_size {batch_size} "
                            f"x {world} process(es); lower train.batch_size or use more data")
        # random windows are cut per batch from the stored clips: those are what is cached
        self.windows = dataset if isinstance(dataset, RandomWindows) else None
        self.cached: torch.Tensor | None = None
        if cache:
            sample = self.windows.dataset.stored(0).half() if self.windows is not None else dataset[0]
            need = n_clips * sample.numel() * sample.element_size()
            if need <= CACHE_LIMIT_BYTES:
                self.cached = (_cache_stored(self.windows.dataset, progress and rank == 0) if self.windows is not None
                               else cache_dataset(dataset, workers, progress and rank == 0))
            else:
                log.info("training set needs %.1f GiB: streaming from the shards instead of caching", need / 2**30)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's batches of ``epoch`` as index tensors [B]."""
        self.sampler.set_epoch(epoch)
        idx = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        n = self.batches_per_epoch * self.batch_size
        return list(idx[:n].split(self.batch_size))

    def iterate(self, epoch: int, batch: int, epochs: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(epoch, batch index, real mels [B, 1, R, R]) from position (epoch, batch) to the end of ``epochs``."""
        while epoch < epochs:
            chunks = self.epoch_batches(epoch)[batch:]
            source: Iterator[torch.Tensor]
            if self.windows is not None:
                self.windows.set_epoch(epoch)  # before a loader's workers fork
            if self.cached is not None:
                rows = functools.partial(self.cached.index_select, 0)  # ix [B] -> cached items [B, ...]
                windows = self.windows
                source = (windows.batch(ix, epoch, rows) if windows is not None else rows(ix) for ix in chunks)
            else:
                source = iter(DataLoader(self.dataset, batch_sampler=[ix.tolist() for ix in chunks],
                                         num_workers=self.workers, pin_memory=self.pin_memory,
                                         # its own generator: creating the iterator must not draw from
                                         # the global RNG, which dropout uses (resume would drift)
                                         generator=torch.Generator().manual_seed(self.seed + epoch)))
            for k, real in enumerate(source):
                yield epoch, batch + k, real
            epoch, batch = epoch + 1, 0
