"""An exponential moving average (EMA) of a model's weights, for --ema_decay.

After every applied training step each parameter of the average moves towards the trained one,
``ema = decay * ema + (1 - decay) * weight`` (the arithmetic of
``torch.optim.swa_utils.get_ema_multi_avg_fn``, as ``AveragedModel`` uses it; BasicSR's
``ema_decay``, KAIR's ``E_decay``), starting from the weights the run starts with. Buffers are
not averaged: the BatchNorm running statistics and MoCo's queue are copied from the trained
model after every update, so the average is normalised with the statistics the training
forwards gathered. The same arithmetic on the same weights keeps it identical on every process.
With ``decay`` d the average spans about 1 / (1 - d) steps (1000 for 0.999); a run much shorter
than that scores mostly its first weights (``averaging_note``).
"""
import copy
from typing import Dict, Optional

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightEMA:
    """The moving average of ``model``'s weights, held in ``module``: a copy of the model in
    eval mode without gradients, on the model's device, scored in its place."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._average = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s parameters; buffers copied."""
        self._average(list(self.module.parameters()), [p.detach() for p in model.parameters()], None)
        for average, trained in zip(self.module.buffers(), model.buffers(), strict=True):
            average.copy_(trained)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average afresh from ``model``'s current weights and buffers."""
        self.module.load_state_dict(model.state_dict())

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The averaged model's state dict (the trained model's keys)."""
        return self.module.state_dict()

    def tensors(self) -> list:
        """The averaged parameters and buffers (to check that every process holds the same)."""
        return [*self.module.parameters(), *self.module.buffers()]


def averaging_note(decay: float, steps: int) -> Optional[str]:
    """A warning when a run of ``steps`` optimisation steps is too short for ``decay``: after
    ``steps`` updates the starting weights still carry ``decay ** steps`` of the average."""
    left = decay ** steps
    if left < 0.1:
        return None
    return (f"--ema_decay {decay:g} averages over about {1 / (1 - decay):.0f} steps, and this run "
            f"has {steps}: the starting weights will still make up {100 * left:.0f}% of the EMA "
            f"at the end, which then scores below the trained weights; for a run this short use "
            f"--ema_decay {max(0.0, 1 - 10 / steps):.3g} or less (1 - 10 / steps)")
