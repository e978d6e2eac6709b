"""The checkpoints of a training run: ``<run>/checkpoint/last.pt``, ``best.pt``, ``epoch_<n>.pt``.

Each holds the weights fields (``RunCheckpoints.weights_fields``: enough for test.py to rebuild
the model) in ``model.checkpoint``'s format, written atomically. ``last.pt`` (rewritten after
every epoch) and ``epoch_<n>.pt`` (with --save_models) add the optimizer and the lr schedule;
``last.pt`` written in the middle of an epoch, when a scheduler's signal stopped the run, adds
``progress``: the iteration and what the epoch loop needs to continue it exactly. ``resume``
reads one back into the model and says where the run continues (``ResumePoint``).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .checkpoint import load_weights, read_checkpoint, save_checkpoint
from .parallel import check_in_sync
from .training import Phase, phase_of


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: after ``epoch`` finished epochs and ``iteration``
    iterations of the next (0 at an epoch's end, where ``progress`` is {}). ``state``: the
    checkpoint as read from ``path``; ``phase``: the phase it was saved in; ``same_phase``:
    whether the run goes on in that phase, so its optimizer and schedule carry over."""
    path: Path
    state: Dict[str, object]
    epoch: int
    iteration: int
    progress: Dict[str, object]
    phase: Phase
    same_phase: bool

    @property
    def position(self) -> str:
        """'iteration 3 of epoch 2' or 'epoch 1', for the log."""
        if self.iteration:
            return f"iteration {self.iteration} of epoch {self.epoch + 1}"
        return f"epoch {self.epoch}"


class RunCheckpoints:
    """The checkpoint folder of the run in ``run_dir``. ``config``: the run's options, stored in
    every checkpoint; ``keep_epochs`` (--save_models): also keep ``epoch_<n>.pt`` of every
    epoch; only the main process (``is_main``) writes."""

    def __init__(self, run_dir: Path, config: Dict[str, object], *, keep_epochs: bool,
                 is_main: bool) -> None:
        self.folder = Path(run_dir) / "checkpoint"
        self.config = config
        self.keep_epochs = keep_epochs
        self.is_main = is_main

    def path(self, name: str) -> Path:
        return self.folder / name

    def weights_fields(self, model: nn.Module, phase: Phase, epoch: int) -> Dict[str, object]:
        """What every checkpoint of this run holds: enough for test.py to rebuild the model."""
        return dict(model_name=model.name, scale=model.scale, model_kwargs=model.hparams,
                    model=model.state_dict(), epoch=epoch, phase=phase.name, config=self.config)

    def save(self, model: nn.Module, phase: Phase, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int,
             progress: Optional[Dict[str, object]] = None) -> None:
        """last.pt (and epoch_<epoch>.pt with ``keep_epochs``) after ``epoch`` finished epochs,
        or, with ``progress`` (its ``iteration`` and what the loop needs to go on), last.pt in
        the middle of epoch ``epoch + 1``. Every process calls it (it checks they still hold
        the same model); the main process writes. Non-finite weights are never written."""
        moco = model.encoder
        check_in_sync([*model.parameters(), moco.queue, moco.queue_ptr],
                      "the model's parameters or MoCo queue")
        if not all(torch.isfinite(t).all() for t in model.state_dict().values()
                   if t.is_floating_point()):
            raise FloatingPointError(f"the weights are no longer finite after epoch {epoch}; "
                                     f"nothing saved, {self.path('last.pt')} is the "
                                     "last good state: lower the learning rate and --resume")
        if not self.is_main:
            return
        fields = dict(self.weights_fields(model, phase, epoch), optimizer=optimizer.state_dict(),
                      scheduler=scheduler.state_dict(), progress=progress)
        save_checkpoint(self.path("last.pt"), **fields)
        if self.keep_epochs and progress is None:
            save_checkpoint(self.path(f"epoch_{epoch}.pt"), **fields)

    def save_best(self, model: nn.Module, phase: Phase, epoch: int) -> None:
        """best.pt: the weights fields after ``epoch``."""
        save_checkpoint(self.path("best.pt"), **self.weights_fields(model, phase, epoch))

    def resume(self, which: int, model: nn.Module, phases: Sequence[Phase]) -> ResumePoint:
        """Load ``last.pt`` (``which`` -1) or ``epoch_<which>.pt`` into ``model`` (weights and
        MoCo queue, strictly) and check that ``phases`` (the current options') put the epoch it
        was saved in in the same phase."""
        name = "last.pt" if which == -1 else f"epoch_{which}.pt"
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (run without --resume, "
                                    "or with --save_models to keep per-epoch checkpoints)")
        state = read_checkpoint(path)
        load_weights(model, state, label=str(path))
        epoch, progress = state["epoch"], state.get("progress") or {}
        iteration = progress.get("iteration", 0)
        at = epoch + 1 if iteration else epoch           # the epoch the saved phase belongs to
        phase = phase_of(phases, at) if at <= phases[-1].last else None
        if phase is None or phase.name != state["phase"]:
            raise ValueError(f"{path} was saved in epoch {at}, phase '{state['phase']}', but the "
                             f"current options put epoch {at} in "
                             f"'{phase.name if phase else 'no phase'}'; use the same "
                             "--epochs_encoder/--epochs_sr/--freeze_epoch as the original run")
        same_phase = bool(iteration or (epoch < phases[-1].last and phase_of(phases, epoch + 1) is phase))
        return ResumePoint(path, state, epoch, iteration, progress, phase, same_phase)


def epoch_checkpoints(save: str, epoch: int, *, scale: Optional[int], sample_mode: str,
                      blur_type: str, root: Path = Path("experiment")) -> List[Path]:
    """Where epoch ``epoch`` (-1: the latest) of the training run ``save`` may be, in the order
    to try: ours, ``ROOT/SAVE/checkpoint/epoch_<N>.pt`` (``last.pt``), then DASR's run layout,
    ``ROOT/SAVE_x<scale>_<sample_mode>_<iso|aniso>/model/model_<N>.pt`` (``model_latest.pt``),
    for ``scale`` or, when None, each of 2, 3, 4."""
    ours = Path(root) / save / "checkpoint" / ("last.pt" if epoch == -1 else f"epoch_{epoch}.pt")
    blur = "iso" if blur_type == "iso_gaussian" else "aniso"
    authors = "model_latest.pt" if epoch == -1 else f"model_{epoch}.pt"
    return [ours] + [Path(root) / f"{save}_x{s}_{sample_mode}_{blur}" / "model" / authors
                     for s in ((scale,) if scale else (2, 3, 4))]
