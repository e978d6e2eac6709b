"""Momentum contrast (MoCo, He et al. 2020) for degradation encoders.

``MoCo`` holds a query encoder (trained), a key encoder (its momentum average, never trained by
gradients) and a queue of past keys. Its forward changes no state, so DataParallel or DDP can
replicate it; the training step updates the state once per step on the real module:

1. ``momentum_update()`` before the forward (the key encoder follows the pre-step query weights),
2. the forward: logits against the queue as it was before this step,
3. ``enqueue(keys)`` after the backward, with the keys of the whole (global) batch in batch order.

That is the authors' arithmetic and order (their forward does 1-3 itself, which under
DataParallel keeps only device 0's keys).
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MoCo(nn.Module):
    """Query/key encoders with a queue of negative keys.

    ``encoder_fn()`` builds one encoder: a module mapping an image batch (B,3,H,W) to
    ``(embedding (B,E), projection (B,dim))``; the embedding conditions the generator, the
    projection (the contrastive head's output) is what MoCo compares.

    Buffers: ``queue`` (dim, queue_size), unit-norm columns, initialised from randn;
    ``queue_ptr`` (1,) int64, the next column to overwrite.
    """

    def __init__(self, encoder_fn: Callable[[], nn.Module], *, dim: int = 256,
                 queue_size: int = 8192, momentum: float = 0.999, temperature: float = 0.07):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.momentum = momentum
        self.temperature = temperature
        self.query_encoder = encoder_fn()
        self.key_encoder = encoder_fn()
        # Like the reference MoCo: copy parameters only; the key encoder's BatchNorm buffers
        # keep their defaults and evolve on their own from the key batches.
        with torch.no_grad():
            for p_q, p_k in zip(self.query_encoder.parameters(), self.key_encoder.parameters(),
                                strict=True):
                p_k.copy_(p_q)
                p_k.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return self.queue.shape[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,E): the query encoder's embedding."""
        return self.query_encoder(x)[0]

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """One contrastive training forward; changes no MoCo state (BatchNorm running statistics
        of the encoders in train mode aside).

        x_q, x_k: (B,3,H,W) two patches per image with the same degradation (positives).
        Returns ``embedding`` (B,E) for the generator (not detached), ``proj_q``/``proj_k``
        (B,dim) head outputs before L2 normalisation, ``keys`` (B,dim) the L2-normalised
        ``proj_k`` to enqueue, ``logits`` (B,1+K) = [q.k+, q.queue] / T and ``labels`` (B,)
        int64 zeros (the positive is column 0).
        """
        embedding, proj_q = self.query_encoder(x_q)                      # (B,E), (B,dim)
        with torch.no_grad():
            _, proj_k = self.key_encoder(x_k)                            # (B,dim)
        with torch.autocast(x_q.device.type, enabled=False):            # float32 under any precision
            q = F.normalize(proj_q.float(), dim=1)
            k = F.normalize(proj_k.detach().float(), dim=1)
            positive = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)      # (B,1)
            negative = torch.einsum("nc,ck->nk", q, self.queue)          # (B,K)
            logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(x_q.shape[0], dtype=torch.long, device=logits.device)
        return {"embedding": embedding, "logits": logits, "labels": labels,
                "proj_q": proj_q, "proj_k": proj_k, "keys": k}

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = key * m + query * (1 - m), parameters only (the reference's exact arithmetic).
        Call once per step, before the forward."""
        m = self.momentum
        for p_q, p_k in zip(self.query_encoder.parameters(), self.key_encoder.parameters()):
            p_k.copy_(p_k * m + p_q.detach() * (1.0 - m))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (B,dim) into the queue columns from ``queue_ptr`` on, wrapping around.

        Call once per step with every key of the (global) batch, after the backward: the
        step's logits were formed from the queue as it was, and autograd still holds it until
        the backward has run."""
        size, batch = self.queue_size, keys.shape[0]
        if batch > size:
            raise ValueError(f"a batch of {batch} keys exceeds the queue size {size}")
        ptr = int(self.queue_ptr)
        keys = keys.to(self.queue.dtype)
        if ptr + batch <= size:
            self.queue[:, ptr:ptr + batch] = keys.T
        else:
            columns = (ptr + torch.arange(batch, device=keys.device)) % size
            self.queue[:, columns] = keys.T
        self.queue_ptr[0] = (ptr + batch) % size
