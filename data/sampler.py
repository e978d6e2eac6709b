"""The order of training items: one global stream, cut into per-process shares."""
from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[List[int]]):
    """Index batches of one epoch for one of ``world_size`` processes.

    The epoch is a permutation of ``range(length)`` drawn from ``seed``, cut into global
    batches of ``batch_size`` (a last partial batch is dropped). Process ``rank`` takes the
    ``rank``-th contiguous share of every global batch, so the shares of all processes,
    concatenated in rank order, are exactly the global batch of a one-process run. ``start``
    skips the first ``start`` global batches (resuming in the middle of an epoch).
    """

    def __init__(self, length: int, batch_size: int, seed: int, *, rank: int = 0,
                 world_size: int = 1, start: int = 0) -> None:
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} must be divisible by the number of "
                             f"processes {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.share = batch_size // world_size
        self.rank, self.start = rank, start

    def __len__(self) -> int:
        return max(self.length // self.batch_size - self.start, 0)

    def __iter__(self) -> Iterator[List[int]]:
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed))
        first = self.rank * self.share
        for k in range(self.start, self.length // self.batch_size):
            batch = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield batch[first:first + self.share].tolist()
