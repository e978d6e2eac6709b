"""The contract of every registered blind-SR model (CDSR, DASR, their variants and KDSR).

A model is a degradation encoder (``model.encoder``) and a generator conditioned on the
encoder's embedding (``model.generator``). Images are float (B,3,H,W) RGB in 0..255 on any
device; SR outputs are in 0..255 units and not clamped.

    embed(lr)                (B,3,h,w)          -> (B,E)   degradation embedding
    super_resolve(lr, emb)   (B,3,h,w), (B,E)   -> (B,3,s*h,s*w), the generator alone
    forward(lr)              super_resolve(lr, embed(lr)): the evaluation forward, any mode

``BlindSRModel`` holds this encoder-agnostic part: its encoder is any module with
``embed(x) -> (B,E)`` on network-range input. ``ContrastiveBlindSRModel`` (CDSR, DASR) adds
the MoCo training forward:

    forward(lr, lr_key)      one contrastive training forward (MoCo's dict, plus ``sr``)

KDSR (``model/kdsr.py``) adds its distillation forward and, for its teacher, whose encoder
also reads the HR image, ``needs_hr = True`` and an ``hr`` argument to ``embed`` and ``forward``.

``name`` is the registry name, ``scale`` the upscaling factor and ``hparams`` the constructor's
other keyword arguments, recorded automatically, so ``build_model(name, scale=s, **hparams)``
rebuilds the same network (checkpoints store them).
"""
import functools
import inspect
from typing import Any, Callable

import torch
from torch import nn

from .blocks import check_image_batch


def _recording_hparams(init: Callable) -> Callable:
    """Wrap a constructor so the outermost call stores its bound arguments (defaults included,
    ``**kwargs`` flattened, ``scale`` left out) as ``_hparams``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args: Any, **kwargs: Any) -> None:
        if "_hparams" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            hparams: dict = {}
            for name, value in list(bound.arguments.items())[1:]:
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    hparams.update(value)
                elif name != "scale":
                    hparams[name] = value
            object.__setattr__(self, "_hparams", hparams)   # before nn.Module.__init__ runs
        init(self, *args, **kwargs)

    return wrapped


class BlindSRModel(nn.Module):
    """Base class of the registered models; see the module docstring for the contract.

    Subclasses set ``name``, ``min_input_size`` (the encoder's smallest H and W) with
    ``min_input_reason`` and, if the networks work in another range than 0..255, override
    ``to_network_range`` / ``from_network_range``. ``needs_hr`` is True for a model whose
    encoder reads the HR image too (KDSR's teacher): it cannot super-resolve an LR alone.
    """

    name = ""
    min_input_size = 1
    min_input_reason = ""
    needs_hr = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_hparams(cls.__init__)

    def __init__(self, *, scale: int, encoder: nn.Module, generator: nn.Module):
        super().__init__()
        self.scale = scale
        self.generator = generator  # registered first: state-dict order G, E like the authors'
        self.encoder = encoder

    @classmethod
    def input_requirement(cls, **switches: Any) -> tuple[int, str]:
        """(the smallest LR height and width the encoder reads, why) of the model the
        constructor switches ``switches`` build, without building it."""
        return cls.min_input_size, cls.min_input_reason

    @property
    def hparams(self) -> dict:
        """The constructor's keyword arguments besides ``scale`` (a copy)."""
        return dict(self.__dict__.get("_hparams", {}))

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
        """(B,3,h,w) in 0..255 -> (B,embed_dim) degradation embedding (``encoder.embed``)."""
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

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """The evaluation forward: SR (B,3,s*h,s*w) = super_resolve(lr, embed(lr))."""
        return self.super_resolve(lr, self.embed(lr))


class ContrastiveBlindSRModel(BlindSRModel):
    """A model whose ``encoder`` is a ``MoCo`` (CDSR, DASR): its forward is the evaluation
    forward or one contrastive training forward."""

    def forward(self, lr: torch.Tensor, lr_key: torch.Tensor | None = None, *,
                with_sr: bool = True) -> torch.Tensor | dict[str, torch.Tensor]:
        """The evaluation forward, or one contrastive training forward.

        ``lr_key is None``: returns SR (B,3,s*h,s*w) = super_resolve(lr, embed(lr)).
        ``lr_key`` (B,3,h',w') given: returns MoCo's dict (``embedding``, ``logits``,
        ``labels``, ``proj_q``, ``proj_k``, ``keys``; see ``MoCo.forward``) and, when
        ``with_sr``, ``sr`` = generator(lr, embedding). No MoCo state changes: the training
        step calls ``encoder.momentum_update()`` before and ``encoder.enqueue(keys)`` after.
        """
        if lr_key is None:
            return self.super_resolve(lr, self.embed(lr))
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
