"""Resumable, rank-sharded batches of a MelDataset.

Batch order is a pure function of (seed, epoch, rank, world size): each epoch is one
``DistributedSampler`` permutation (with world size 1 outside torchrun), cut into full
batches. A position (epoch, batch index) is therefore enough to continue exactly where
a checkpoint stopped, which is what makes ``--resume`` bit-exact.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sized, cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from pipeline.errors import UserError

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
        self.cached: torch.Tensor | None = None
        if cache:
            sample = dataset[0]
            need = n_clips * sample.numel() * sample.element_size()
            if need <= CACHE_LIMIT_BYTES:
                self.cached = cache_dataset(dataset, workers, progress and rank == 0)
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
            if self.cached is not None:
                source = (self.cached.index_select(0, ix) for ix in chunks)
            else:
                source = iter(DataLoader(self.dataset, batch_sampler=[ix.tolist() for ix in chunks],
                                         num_workers=self.workers, pin_memory=self.pin_memory,
                                         # its own generator: creating the iterator must not draw from
                                         # the global RNG, which dropout uses (resume would drift)
                                         generator=torch.Generator().manual_seed(self.seed + epoch)))
            for k, real in enumerate(source):
                yield epoch, batch + k, real
            epoch, batch = epoch + 1, 0
