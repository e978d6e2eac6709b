"""Momentum contrast (MoCo, He et al. 2020) for degradation encoders, and the blind-SR wrapper.

``MoCo`` holds a query encoder (trained), a key encoder (its momentum average, never trained by
gradients) and a queue of past keys. ``BlindSRModel`` ties a MoCo encoder to a generator and
implements the model API shared by CDSR and DASR (``embed``, ``super_resolve``, ``forward``).
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_image_batch


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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,E): the query encoder's embedding (no MoCo state is touched)."""
        return self.query_encoder(x)[0]

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """One contrastive training forward; updates the key encoder and the queue.

        x_q, x_k: (B,3,H,W) two patches per image with the same degradation (positives).
        Returns ``embedding`` (B,E) for the generator (not detached), ``proj_q``/``proj_k``
        (B,dim) head outputs before L2 normalisation, ``logits`` (B,1+K) = [q.k+, q.queue] / T
        and ``labels`` (B,) int64 zeros (the positive is column 0).
        """
        batch = x_q.shape[0]
        if batch > self.queue.shape[1]:
            raise ValueError(f"batch size {batch} exceeds the queue size {self.queue.shape[1]}")
        embedding, proj_q = self.query_encoder(x_q)                      # (B,E), (B,dim)
        q = F.normalize(proj_q, dim=1)
        with torch.no_grad():
            self._momentum_update()            # before the keys, with the pre-step query weights
            _, proj_k = self.key_encoder(x_k)                            # (B,dim)
            k = F.normalize(proj_k, dim=1)
        positive = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)          # (B,1)
        negative = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())  # (B,K)
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(batch, dtype=torch.long, device=logits.device)
        self._enqueue(k)                                                 # after the logits
        return {"embedding": embedding, "logits": logits, "labels": labels,
                "proj_q": proj_q, "proj_k": proj_k}

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """key = key * m + query * (1 - m), parameters only (the reference's exact arithmetic)."""
        m = self.momentum
        for p_q, p_k in zip(self.query_encoder.parameters(), self.key_encoder.parameters()):
            p_k.copy_(p_k * m + p_q.detach() * (1.0 - m))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (B,dim) into the queue columns from ``queue_ptr`` on, wrapping around."""
        size = self.queue.shape[1]
        batch = keys.shape[0]
        ptr = int(self.queue_ptr)
        if ptr + batch <= size:
            self.queue[:, ptr:ptr + batch] = keys.T
        else:
            columns = (ptr + torch.arange(batch, device=keys.device)) % size
            self.queue[:, columns] = keys.T
        self.queue_ptr[0] = (ptr + batch) % size


class BlindSRModel(nn.Module):
    """A MoCo-trained degradation encoder plus a degradation-conditioned SR generator.

    Subclasses set ``name``, ``min_input_size`` and, if the networks work in another range,
    override ``to_network_range`` / ``from_network_range``. Images are float (B,3,H,W) RGB in
    0..255; SR outputs are in 0..255 units and not clamped.
    """

    name = ""
    min_input_size = 1      # the encoder's smallest H and W
    min_input_reason = ""   # why, for the error message

    def __init__(self, *, scale: int, encoder: MoCo, generator: nn.Module, hparams: dict):
        super().__init__()
        self.scale = scale
        self.hparams = dict(hparams)  # constructor keywords besides scale; checkpoints keep them
        self.generator = generator  # registered first: state-dict order G, E like the authors'
        self.encoder = encoder

    def to_network_range(self, lr: torch.Tensor) -> torch.Tensor:
        """Map 0..255 pixels to the range the networks expect (identity by default)."""
        return lr

    def from_network_range(self, sr: torch.Tensor) -> torch.Tensor:
        """Map the generator's output back to 0..255 units (identity by default)."""
        return sr

    def check_input(self, lr: torch.Tensor, what: str = "lr") -> None:
        """Raise ValueError unless ``lr`` is a (B,3,H,W) float batch the encoder can read."""
        check_image_batch(lr, f"{self.name.upper()} {what}", self.min_input_size,
                          self.min_input_reason)

    def embed(self, lr: torch.Tensor) -> torch.Tensor:
        """(B,3,h,w) in 0..255 -> (B,embed_dim) degradation embedding (query encoder)."""
        self.check_input(lr)
        return self.encoder.embed(self.to_network_range(lr))

    def super_resolve(self, lr: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Generator only: lr (B,3,h,w) 0..255, embedding (B,embed_dim) -> (B,3,s*h,s*w).

        Any h, w >= 1 (tiles may be smaller than what the encoder needs)."""
        check_image_batch(lr, f"{self.name.upper()} lr")
        if embedding.dim() != 2 or embedding.shape[0] != lr.shape[0]:
            raise ValueError(f"embedding must be (B,embed_dim) with B = {lr.shape[0]}, "
                             f"got {tuple(embedding.shape)}")
        return self.from_network_range(self.generator(self.to_network_range(lr), embedding))

    def forward(self, lr: torch.Tensor, lr_key: torch.Tensor | None = None, *,
                with_sr: bool = True) -> torch.Tensor | dict[str, torch.Tensor]:
        """Eval contract or one training forward.

        ``lr_key is None``: returns SR (B,3,s*h,s*w) = super_resolve(lr, embed(lr)), any mode.
        ``lr_key`` (B,3,h',w') given, train mode only: returns MoCo's dict (``embedding``,
        ``logits``, ``labels``, ``proj_q``, ``proj_k``, see ``MoCo.forward``) and, when
        ``with_sr``, ``sr`` = generator(lr, embedding), computed after the queue update.
        """
        if lr_key is None:
            return self.super_resolve(lr, self.embed(lr))
        if not self.training:
            raise RuntimeError("the training forward (lr_key given) updates the MoCo queue and "
                               "needs train mode; call model.train() first")
        self.check_input(lr)
        self.check_input(lr_key, "lr_key")
        if lr_key.shape[0] != lr.shape[0]:
            raise ValueError(f"lr and lr_key batch sizes differ: {lr.shape[0]} vs "
                             f"{lr_key.shape[0]}")
        x_q = self.to_network_range(lr)
        out = self.encoder(x_q, self.to_network_range(lr_key))
        if with_sr:
            out["sr"] = self.from_network_range(self.generator(x_q, out["embedding"]))
        return out
