"""Whether CDSR's CSC codebook is alive: how the samples spread their attention over its rows.

A codebook in use mixes many rows and different inputs pick different ones; a collapsed one puts
all its attention on a few rows for every input, so the embedding is (nearly) constant and the
DQA blocks get no degradation information. ``codebook_usage`` measures it on attention weights;
during training ``CodebookMonitor`` gathers the attention of every training forward of the
query encoder's codebook and ``CollapseWatch`` turns a collapse that lasts into one warning.
"""
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .lpe import DegradationCodebook
from .parallel import sum_over_processes

MASS_SHARE = 0.9            # "rows used": the fewest rows that hold this share of the attention
COLLAPSE_SHARE = 0.02       # collapsed: that many rows are at most this share of all rows ...
COLLAPSE_EPOCHS = 3         # ... for this many epochs in a row


def _entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1)


def mass_usage(mass: Tensor, mass_share: float = MASS_SHARE) -> Dict[str, object]:
    """How a mean attention ``mass`` (K,) (non-negative, normalised here) spreads over the K rows:
    ``entropy`` in nats (``max_entropy`` = log K), ``perplexity`` = exp(entropy), the effective
    number of rows used, and ``rows_for_mass``, the fewest rows whose mass reaches ``mass_share``.
    """
    mass = mass.double()
    mass = mass / mass.sum()
    ordered = torch.sort(mass, descending=True).values
    reached = torch.cumsum(ordered, 0) >= mass_share - 1e-12
    value = float(_entropy(mass))
    return {"rows": mass.shape[0], "entropy": value, "max_entropy": math.log(mass.shape[0]),
            "perplexity": math.exp(value), "mass_share": mass_share,
            "rows_for_mass": int(torch.nonzero(reached)[0]) + 1, "mass": mass.tolist()}


def codebook_usage(attention: Tensor, mass_share: float = MASS_SHARE) -> Dict[str, object]:
    """How the samples spread their codebook attention: attention (N,K), each row a softmax over
    the K codebook rows. ``mass_usage`` of the mean attention per row (``mass`` (K,), sums to 1),
    and ``sample_entropy``, the mean entropy of one sample's attention (low: each sample picks
    few rows; high: each mixes many)."""
    a = attention.double()
    return {**mass_usage(a.mean(dim=0), mass_share), "sample_entropy": float(_entropy(a).mean())}


def query_codebook(model: nn.Module) -> Optional[DegradationCodebook]:
    """The CSC codebook of the encoder whose embedding conditions the generator (MoCo's query
    encoder, or the encoder itself), or None for a model without one (DASR, KDSR, ``cdsr-no-csc``)."""
    encoder = getattr(model, "encoder", None)           # a KDSR pair has none of its own
    encoder = getattr(encoder, "query_encoder", encoder)
    codebook = getattr(encoder, "codebook", None)
    return codebook if isinstance(codebook, DegradationCodebook) else None


class CodebookMonitor:
    """The attention of ``codebook`` in every forward made while ``recording`` (the training
    forwards of an epoch, also on DataParallel's replicas), summed per row; ``epoch_usage``
    gives its ``codebook_usage`` over every process and starts the next epoch. The attention is
    recomputed from the codebook's input (a (B,D) x (D,K) product), without gradients."""

    def __init__(self, codebook: DegradationCodebook) -> None:
        self.codebook = codebook
        self._parts: List[Tuple[Tensor, Tensor, int]] = []   # per forward: row sums, entropy sum, B

    def _observe(self, module: DegradationCodebook, inputs: Tuple[Tensor, ...], _output) -> None:
        with torch.no_grad():
            weights = module.attention(inputs[0].detach()).double()                # (B,K)
            self._parts.append((weights.sum(dim=0), _entropy(weights).sum(), weights.shape[0]))

    @contextmanager
    def recording(self) -> Iterator[None]:
        handle = self.codebook.register_forward_hook(self._observe)
        try:
            yield
        finally:
            handle.remove()

    def epoch_usage(self, device: torch.device) -> Optional[Dict[str, object]]:
        """``codebook_usage`` of the attention recorded since the last call, over every process
        (a collective: every process calls it); None when nothing was recorded."""
        parts, self._parts = self._parts, []
        rows = self.codebook.entries.shape[0]
        total = torch.zeros(rows + 2, dtype=torch.float64, device=device)   # row sums, entropy, N
        for row_sums, entropy_sum, count in parts:
            total[:rows] += row_sums.to(device)
            total[rows] += entropy_sum.to(device)
            total[rows + 1] += count
        total = sum_over_processes(total)
        count = float(total[rows + 1])
        if count == 0:
            return None
        return {**mass_usage(total[:rows].cpu()), "sample_entropy": float(total[rows]) / count,
                "samples": int(count)}


class CollapseWatch:
    """Counts the epochs in a row whose codebook usage puts ``MASS_SHARE`` of the attention on at
    most ``share`` of the rows (at least one row); ``observe`` returns the one warning line when
    that streak reaches ``epochs`` (again after a recovery), else None."""

    def __init__(self, share: float = COLLAPSE_SHARE, epochs: int = COLLAPSE_EPOCHS) -> None:
        self.share = share
        self.epochs = epochs
        self.streak = 0

    def collapsed(self, usage: Dict[str, object]) -> bool:
        return usage["rows_for_mass"] <= max(1, math.floor(self.share * usage["rows"]))

    def observe(self, usage: Dict[str, object]) -> Optional[str]:
        self.streak = self.streak + 1 if self.collapsed(usage) else 0
        if self.streak != self.epochs:
            return None
        k, rows = usage["rows_for_mass"], usage["rows"]
        return (f"the CSC codebook has collapsed to {k} row{'s' if k > 1 else ''}: "
                f"{100 * usage['mass_share']:.0f}% of its attention went to {k} of its {rows} rows "
                f"(perplexity {usage['perplexity']:.1f}) for {self.epochs} epochs in a row, so the "
                "embedding hardly changes with the input and the DQA blocks get little degradation "
                "information; try a longer encoder pre-training (--epochs_encoder), a lower --lr_sr "
                "or a larger --batch_size, and compare with --ablation no-csc")
