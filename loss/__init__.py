"""Training losses: reconstruction terms from a ``--loss`` string plus the contrastive term.

``build_loss("1*L1", c_weight=1.0)`` returns a :class:`Criterion`. It scores whatever the model
produced: reconstruction terms when the outputs hold ``sr``, the MoCo cross-entropy when they
hold ``logits``. Each phase therefore gets its loss from what it runs (pre-training: contrastive
only; joint: both, ``total = c_weight * contrastive + sum(w_i * term_i)`` as the authors add
them; frozen encoder: reconstruction only).
"""
import re
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

RECONSTRUCTION_TERMS = {
    "L1": nn.L1Loss,
    "MSE": nn.MSELoss,
}


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
    """Weighted sum of reconstruction losses (on ``sr`` vs ``hr``, 0..255 units, the authors'
    scale) and the contrastive cross-entropy (on ``logits``/``labels``)."""

    def __init__(self, terms: List[Tuple[float, str]], c_weight: float) -> None:
        super().__init__()
        self.weights = [weight for weight, _ in terms]
        self.names = [name for _, name in terms]
        self.terms = nn.ModuleList(RECONSTRUCTION_TERMS[name]() for name in self.names)
        self.c_weight = c_weight

    def forward(self, outputs: Dict[str, torch.Tensor], hr: torch.Tensor) -> Dict[str, torch.Tensor]:
        """outputs: ``sr`` (B,3,H,W) and/or ``logits`` (B,1+K), ``labels`` (B,); hr (B,3,H,W).
        Returns every weighted component and their sum under ``total``."""
        losses = {}
        if "sr" in outputs:
            sr = outputs["sr"].float()                  # float32 under mixed precision too
            for weight, name, term in zip(self.weights, self.names, self.terms):
                losses[name] = weight * term(sr, hr)
        if "logits" in outputs:
            logits = outputs["logits"].float()
            losses["contrastive"] = self.c_weight * F.cross_entropy(logits, outputs["labels"])
        if not losses:
            raise ValueError("the model outputs hold neither 'sr' nor 'logits'")
        losses["total"] = sum(losses.values())
        return losses


def build_loss(spec: str, c_weight: float) -> Criterion:
    return Criterion(parse_loss_spec(spec), c_weight)
