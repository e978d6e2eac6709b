"""Training losses: reconstruction terms from a ``--loss`` string, the contrastive term and
KDSR's distillation term.

``build_loss("1*L1", c_weight=1.0)`` returns a :class:`Criterion`. It scores whatever the model
produced: reconstruction terms when the outputs hold ``sr``, the MoCo cross-entropy when they
hold ``logits``, the distillation loss when they hold ``kd_features`` and
``teacher_kd_features``. Each phase therefore gets its loss from what it runs (pre-training:
contrastive only; joint: both, ``total = c_weight * contrastive + sum(w_i * term_i)`` as the
authors add them; frozen encoder: reconstruction only; KDSR: reconstruction (teacher), the
distillation loss alone (distillation-encoder epochs) or both, ``total = sum(w_i * term_i) +
kd_weight * KL`` as in their stage-4 trainers).
"""
import argparse
import re
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .distillation import distillation_kl

RECONSTRUCTION_TERMS = {
    "L1": nn.L1Loss,
    "MSE": nn.MSELoss,
}
KD_TERM = "kd"


def parse_loss_spec(spec: str) -> List[Tuple[float, str]]:
    """``"1*L1+0.5*MSE"`` -> ``[(1.0, "L1"), (0.5, "MSE")]``; ValueError for anything else."""
    terms = []
    for part in spec.replace(" ", "").split("+"):
        match = re.fullmatch(r"([0-9.eE+-]+)\*(\w+)", part)
        if match is None:
            raise ValueError(f"bad --loss term '{part}' in '{spec}'; write WEIGHT*NAME, e.g. 1*L1")
        weight, name = float(match.group(1)), match.group(2)
        if name not in RECONSTRUCTION_TERMS:
            raise ValueError(f"unknown loss '{name}' in --loss '{spec}'; choose one of: "
                             f"{', '.join(RECONSTRUCTION_TERMS)}")
        terms.append((weight, name))
    return terms


class Criterion(nn.Module):
    """Weighted sum of reconstruction losses (on ``sr`` vs ``hr``), the contrastive
    cross-entropy (on ``logits``/``labels``) and, with ``kd_weight``, KDSR's distillation loss
    (on ``kd_features`` vs ``teacher_kd_features`` at ``temperature``).

    ``rgb_range``: the pixel range the reconstruction terms read, the authors' (255: CDSR and
    DASR compare 0..255 images; 1: KDSR compares [0,1] images, so its L1 is 1/255 of the same
    error in 0..255 units, which keeps their balance of L1 against the distillation loss)."""

    def __init__(self, terms: List[Tuple[float, str]], c_weight: float, *, rgb_range: float = 255,
                 kd_weight: Optional[float] = None, temperature: float = 0.15) -> None:
        super().__init__()
        self.weights = [weight for weight, _ in terms]
        self.terms = nn.ModuleList(RECONSTRUCTION_TERMS[name]() for _, name in terms)
        self.reconstruction = [name for _, name in terms]
        self.c_weight = c_weight
        self.pixel_scale = rgb_range / 255
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.names = self.reconstruction + ([KD_TERM] if kd_weight is not None else [])

    def forward(self, outputs: Dict[str, torch.Tensor], hr: torch.Tensor) -> Dict[str, torch.Tensor]:
        """outputs: ``sr`` (B,3,H,W) and/or ``logits`` (B,1+K), ``labels`` (B,) and/or
        ``kd_features``, ``teacher_kd_features`` (B,D); hr (B,3,H,W) in 0..255. Returns every
        weighted component and their sum under ``total``."""
        losses = {}
        if "sr" in outputs:
            sr = outputs["sr"].float()                  # float32 under mixed precision too
            if self.pixel_scale != 1:
                sr, hr = sr * self.pixel_scale, hr * self.pixel_scale
            for weight, name, term in zip(self.weights, self.reconstruction, self.terms):
                losses[name] = weight * term(sr, hr)
        if "logits" in outputs:
            logits = outputs["logits"].float()
            losses["contrastive"] = self.c_weight * F.cross_entropy(logits, outputs["labels"])
        if "kd_features" in outputs and self.kd_weight is not None:
            losses[KD_TERM] = self.kd_weight * distillation_kl(
                outputs["kd_features"], outputs["teacher_kd_features"], self.temperature)
        if not losses:
            raise ValueError("the model outputs hold neither 'sr' nor 'logits' nor, with a "
                             "distillation weight, 'kd_features'")
        losses["total"] = sum(losses.values())
        return losses


def build_loss(spec: str, c_weight: float, *, rgb_range: float = 255,
               kd_weight: Optional[float] = None, temperature: float = 0.15) -> Criterion:
    return Criterion(parse_loss_spec(spec), c_weight, rgb_range=rgb_range, kd_weight=kd_weight,
                     temperature=temperature)


def make_loss(args: argparse.Namespace, model: nn.Module) -> Criterion:
    """The criterion of ``--loss`` and ``--c_weight`` for ``model``: in its authors' pixel range
    (``model.rgb_range``) and, for a model that distils (a KDSR pair), with the distillation
    term at ``--kd_weight`` and ``--temperature``."""
    distills = getattr(model, "distills", False)
    return build_loss(args.loss, args.c_weight, rgb_range=getattr(model, "rgb_range", 255),
                      kd_weight=args.kd_weight if distills else None, temperature=args.temperature)
