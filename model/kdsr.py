"""KDSR (Xia et al., ICLR 2023): a degradation encoder trained by knowledge distillation and
the IDR-DCRB generator (networks in ``model/kdsr_blocks.py``).

Two roles, each at the authors' two sizes (registry names ``kdsr-<role>-<size>``):

* the teacher KDSR-T (``kdsr-t-m``, ``kdsr-t-l``): its encoder reads the LR beside the
  pixel-unshuffled HR, ``cat(lr, PixelUnshuffle_s(hr))`` (3 + 3 s^2 channels); trained first
  with L1 alone;
* the student KDSR-S (``kdsr-s-m``, ``kdsr-s-l``): its encoder reads the LR alone; trained
  second with L1 plus the distillation loss (``loss/distillation.py``) between its encoder's
  ``kd_features`` and the frozen teacher's.

Sizes (``SIZES``): M = n_feats 64, n_blocks 53, n_resblocks 9 (the defaults of the authors'
``option.py``), L = 128, 28, 5 (their ``*_KDSRsLx4_*.sh``). Scale 3 or a power of two (their
EDSR upsampler); the teacher's HR is then s*h x s*w.

Contract, beyond ``model/base.py`` (images 0..255 float; both networks work in [0,1]: the
model divides by 255 and multiplies the SR by 255, not clamped):

    student  embed(lr)                          (B,3,h,w) -> (B,C)
             encode(lr)                         -> (embedding (B,C), kd_features (B,4C))
             forward(lr)                        SR (B,3,s*h,s*w): the evaluation forward
             forward(lr, features=True)         {'embedding', 'kd_features', 'sr'}
                                                (``with_sr=False``: no 'sr', no generator run)
    teacher  the same with the HR as second argument: embed(lr, hr), encode(lr, hr),
             forward(lr, hr), forward(lr, hr, features=True); hr (B,3,s*h,s*w) in 0..255.
    both     super_resolve(lr, embedding)       the generator alone (reads the LR only)

C is ``n_feats`` (64 or 128). A teacher called without ``hr`` raises ValueError: it cannot
super-resolve an LR alone (``needs_hr`` is True), so an evaluation loop that only has LR
images (``model.inference.predict``, test.py) can score students but not teachers; the
authors validate the teacher by feeding it the HR of each test image (trainer_*_stage3.py).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import BlindSRModel
from .blocks import check_image_batch
from .kdsr_blocks import KDSREncoder, KDSRGenerator


@dataclass(frozen=True)
class KDSRSize:
    """Widths of one published KDSR size."""
    n_feats: int       # C: generator width; the encoder's embedding is C-d, its kd_features 4C-d
    n_blocks: int      # IDR-DCRB blocks in the generator
    n_resblocks: int   # residual blocks in the encoder


SIZES = {"m": KDSRSize(n_feats=64, n_blocks=53, n_resblocks=9),
         "l": KDSRSize(n_feats=128, n_blocks=28, n_resblocks=5)}
ROLES = {"t": "teacher", "s": "student"}


def kdsr_name(role: str, size: str) -> str:
    """The registry name of a KDSR role ('t' or 's') and size ('m' or 'l')."""
    return f"kdsr-{role}-{size}"


def kdsr_role_and_size(name: str) -> tuple[str, str] | None:
    """(role 't' or 's', size 'm' or 'l') of a KDSR registry name; None for other models."""
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "kdsr" and parts[1] in ROLES and parts[2] in SIZES:
        return parts[1], parts[2]
    return None


class KDSR(BlindSRModel):
    """What teacher and student share: sizes, [0,1] range, the distillation forward.

    ``size`` ('m' or 'l') names the model (``kdsr-<role>-<size>``) and gives the widths that
    are not passed; ``hparams`` records the resolved widths.
    """

    role = ""
    rgb_range = 1           # the authors' L1 reads [0,1] images (their --rgb_range 1)

    def __init__(self, scale: int = 4, size: str = "m", n_feats: int | None = None,
                 n_blocks: int | None = None, n_resblocks: int | None = None):
        if size not in SIZES:
            raise ValueError(f"unknown KDSR size {size!r}; choose one of: {', '.join(SIZES)}")
        widths = SIZES[size]
        n_feats = widths.n_feats if n_feats is None else n_feats
        n_blocks = widths.n_blocks if n_blocks is None else n_blocks
        n_resblocks = widths.n_resblocks if n_resblocks is None else n_resblocks
        encoder = KDSREncoder(self.encoder_channels(scale), n_feats, n_resblocks)
        generator = KDSRGenerator(scale=scale, n_feats=n_feats, n_blocks=n_blocks)
        super().__init__(scale=scale, encoder=encoder, generator=generator)
        self.size = size
        self.name = kdsr_name(self.role, size)
        self._hparams.update(n_feats=n_feats, n_blocks=n_blocks, n_resblocks=n_resblocks)

    @staticmethod
    def encoder_channels(scale: int) -> int:
        """Input channels of the encoder at ``scale``."""
        raise NotImplementedError

    def to_network_range(self, lr: torch.Tensor) -> torch.Tensor:
        return lr / 255.0

    def from_network_range(self, sr: torch.Tensor) -> torch.Tensor:
        return sr * 255.0

    def encoder_input(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """What the encoder reads, in [0,1]: (B,encoder_channels,h,w)."""
        raise NotImplementedError

    def encode(self, lr: torch.Tensor,
               hr: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (B,C), kd_features (B,4C)): both outputs of the encoder."""
        return self.encoder(self.encoder_input(lr, hr))

    def embed(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,h,w) in 0..255 (and the teacher's hr) -> (B,C) degradation embedding."""
        return self.encoder.embed(self.encoder_input(lr, hr))

    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None, *,
                features: bool = False,
                with_sr: bool = True) -> torch.Tensor | dict[str, torch.Tensor]:
        """SR (B,3,s*h,s*w) in 0..255 units, or with ``features`` the dict ``embedding``
        (B,C), ``kd_features`` (B,4C) and, when ``with_sr``, ``sr``."""
        if not features:
            return self.super_resolve(lr, self.embed(lr, hr))
        embedding, kd_features = self.encode(lr, hr)
        out = {"embedding": embedding, "kd_features": kd_features}
        if with_sr:
            out["sr"] = self.super_resolve(lr, embedding)
        return out


class KDSRStudent(KDSR):
    """KDSR-S: the encoder reads the LR only. LR (B,3,h,w) 0..255 -> SR (B,3,s*h,s*w)."""

    role = "s"

    @staticmethod
    def encoder_channels(scale: int) -> int:
        return 3

    def encoder_input(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        if hr is not None:
            raise ValueError(f"{self.name.upper()} is a student: its encoder reads the LR only; "
                             f"the HR is for the teacher ({kdsr_name('t', self.size)})")
        self.check_input(lr)
        return self.to_network_range(lr)


class KDSRTeacher(KDSR):
    """KDSR-T: the encoder reads cat(LR, PixelUnshuffle_s(HR)) in [0,1].
    LR (B,3,h,w) and HR (B,3,s*h,s*w) in 0..255 -> SR (B,3,s*h,s*w)."""

    role = "t"
    needs_hr = True

    @staticmethod
    def encoder_channels(scale: int) -> int:
        return 3 + 3 * scale * scale

    def encoder_input(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        if hr is None:
            raise ValueError(f"{self.name.upper()} is the distillation teacher: its encoder reads "
                             "the HR image beside the LR, so it needs hr (embed(lr, hr), "
                             "model(lr, hr)); to super-resolve an LR alone use the student "
                             f"{kdsr_name('s', self.size)}")
        self.check_input(lr)
        check_image_batch(hr, f"{self.name.upper()} hr")
        expected = (lr.shape[0], 3, self.scale * lr.shape[2], self.scale * lr.shape[3])
        if tuple(hr.shape) != expected:
            raise ValueError(f"{self.name.upper()} hr must be {expected} (the LR's batch, "
                             f"x{self.scale} its size), got {tuple(hr.shape)}")
        lr01, hr01 = self.to_network_range(lr), self.to_network_range(hr)
        return torch.cat([lr01, F.pixel_unshuffle(hr01, self.scale)], dim=1)
