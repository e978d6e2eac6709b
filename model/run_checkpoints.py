"""The checkpoints of a training run: ``<run>/checkpoint/last.pt``, ``best.pt``, ``epoch_<n>.pt``.

Each holds the weights fields (``RunCheckpoints.weights_fields``: enough for test.py to rebuild
the model, and with --ema_decay the moving average of the weights; a KDSR distillation run's
hold its student and its teacher) in ``model.checkpoint``'s format, written atomically.
``last.pt`` (rewritten after every epoch) and ``epoch_<n>.pt`` (with --save_models, or by KDSR's
--st_save_epoch rule, ``RunCheckpoints.keeps``) add the optimizer, the lr schedule and
``progress``: the training loop's state (the fp16 gradient scaler, the count of non-finite
steps in a row) and, for ``last.pt`` written in the middle of an epoch when a scheduler's
signal stopped the run, the iteration and what the epoch loop needs to continue it exactly.
``resume`` reads one back into the model and says where the run continues (``ResumePoint``);
``resume_if_same`` does so only for a ``last.pt`` of the same options (--auto_resume). Rank 0
alone reads the file and sends it to the other processes, whose machines need not hold it.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .checkpoint import load_weights, model_fields, read_checkpoint, save_checkpoint
from .ema import WeightEMA
from .moco import MoCo
from .parallel import check_in_sync, on_rank_zero
from .training import Phase, phase_of

# Options that say how a run is carried out, not what it trains: a requeued command may change them.
RUN_CONTROL_OPTIONS = ("resume", "auto_resume", "n_threads", "print_every", "data_cache",
                       "use_tb_logger", "tb_image_every")


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: after ``epoch`` finished epochs and ``iteration``
    iterations of the next (0 at an epoch's end); ``progress``: the loop's state saved with
    it ({} in files older than that field). ``state``: the
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
    epoch; ``keep_after`` (KDSR's --st_save_epoch N): also keep those the authors' trainers
    keep (``keeps``); only the main process (``is_main``) writes."""

    def __init__(self, run_dir: Path, config: Dict[str, object], *, keep_epochs: bool,
                 is_main: bool, keep_after: Optional[int] = None) -> None:
        self.folder = Path(run_dir) / "checkpoint"
        self.config = config
        self.keep_epochs = keep_epochs
        self.keep_after = keep_after
        self.is_main = is_main

    def path(self, name: str) -> Path:
        return self.folder / name

    def keeps(self, phase: Phase, epoch: int) -> bool:
        """Whether ``epoch_<epoch>.pt`` is kept: every epoch with ``keep_epochs``; with
        ``keep_after`` N the epochs KDSR's trainers save (``model_TA_<e>.pt``/``model_ST_<e>.pt``),
        e > N or e a multiple of 20 (teacher) / 30 (student), e counted as their program of
        ``phase`` counts it (``Phase.authors_epoch``)."""
        if self.keep_epochs:
            return True
        if self.keep_after is None:
            return False
        counted = phase.authors_epoch(epoch)
        return counted > self.keep_after or counted % phase.authors_save_period == 0

    def weights_fields(self, model: nn.Module, phase: Phase, epoch: int,
                       ema: Optional[WeightEMA] = None) -> Dict[str, object]:
        """What every checkpoint of this run holds: enough for test.py to rebuild the model,
        and with ``ema`` the moving average of its weights (``model_ema``)."""
        return dict(model_fields(model, ema.module if ema is not None else None), epoch=epoch,
                    phase=phase.name, config=self.config)

    def save(self, model: nn.Module, phase: Phase, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int,
             progress: Optional[Dict[str, object]] = None, ema: Optional[WeightEMA] = None) -> None:
        """last.pt (and epoch_<epoch>.pt with ``keep_epochs``) after ``epoch`` finished epochs,
        holding ``progress``, the training loop's state, and ``ema``'s weights; with an
        ``iteration`` in ``progress``, last.pt in the middle of epoch ``epoch + 1``
        (``progress`` then holds what the loop needs to go on). Every process calls it (it
        checks they still hold the same model and average); the main process writes.
        Non-finite weights are never written."""
        moco = getattr(model, "encoder", None)
        queue = [moco.queue, moco.queue_ptr] if isinstance(moco, MoCo) else []    # KDSR has none
        check_in_sync([*model.parameters(), *queue, *(ema.tensors() if ema is not None else [])],
                      "the model's parameters, MoCo queue or moving average")
        states = [model.state_dict()] + ([ema.state_dict()] if ema is not None else [])
        if not all(torch.isfinite(t).all() for state in states for t in state.values()
                   if t.is_floating_point()):
            raise FloatingPointError(f"the weights are no longer finite after epoch {epoch}; "
                                     f"nothing saved, {self.path('last.pt')} is the "
                                     "last good state: lower the learning rate and --resume")
        if not self.is_main:
            return
        progress = progress or {}
        fields = dict(self.weights_fields(model, phase, epoch, ema), optimizer=optimizer.state_dict(),
                      scheduler=scheduler.state_dict(), progress=progress)
        save_checkpoint(self.path("last.pt"), **fields)
        if self.keeps(phase, epoch) and not progress.get("iteration"):
            save_checkpoint(self.path(f"epoch_{epoch}.pt"), **fields)

    def save_best(self, model: nn.Module, phase: Phase, epoch: int,
                  ema: Optional[WeightEMA] = None) -> None:
        """best.pt: the weights fields after ``epoch`` (with ``ema``: the average, scored)."""
        save_checkpoint(self.path("best.pt"), **self.weights_fields(model, phase, epoch, ema))

    def resume(self, which: int, model: nn.Module, phases: Sequence[Phase]) -> ResumePoint:
        """Load ``last.pt`` (``which`` -1) or ``epoch_<which>.pt`` into ``model`` (weights and
        MoCo queue, strictly) and check that ``phases`` (the current options') put the epoch it
        was saved in in the same phase."""
        path = self.path("last.pt" if which == -1 else f"epoch_{which}.pt")
        return self._here(on_rank_zero(lambda: self._read(path, model, phases)), model, phases)

    def resume_if_same(self, model: nn.Module,
                       phases: Sequence[Phase]) -> Tuple[Optional[ResumePoint], str]:
        """(the point of ``last.pt``, loaded into ``model`` as ``resume`` does, "") when it
        exists and was written with the same options as this run's (``config``, except the
        ``RUN_CONTROL_OPTIONS``); else (None, why not). A file that exists but cannot be read
        is an error, not a reason to start afresh."""
        point, reason = on_rank_zero(lambda: self._read_if_same(model, phases))
        return self._here(point, model, phases), reason

    def _here(self, point: Optional[ResumePoint], model: nn.Module,
              phases: Sequence[Phase]) -> Optional[ResumePoint]:
        """``point`` as rank 0 read and checked it, on this process: the other processes load
        its weights, and its phase is one of ``phases`` (a copy sent by rank 0 is not)."""
        if point is None or self.is_main:
            return point
        load_weights(model, point.state, label=str(point.path))
        return dataclasses.replace(point, phase=next(p for p in phases if p == point.phase))

    def _read_if_same(self, model: nn.Module,
                      phases: Sequence[Phase]) -> Tuple[Optional[ResumePoint], str]:
        path = self.path("last.pt")
        if not path.is_file():
            return None, f"there is no {path}"
        state = read_checkpoint(path)
        saved = state.get("config") or {}
        differing = [f"--{key} {saved[key]} there, {value} here" for key, value in self.config.items()
                     if key in saved and key not in RUN_CONTROL_OPTIONS and saved[key] != value]
        if differing:
            return None, f"{path} was written with other options ({'; '.join(differing)})"
        return self._checked(path, state, model, phases), ""

    def _read(self, path: Path, model: nn.Module, phases: Sequence[Phase]) -> ResumePoint:
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (run without --resume, "
                                    "or with --save_models to keep per-epoch checkpoints)")
        return self._checked(path, read_checkpoint(path), model, phases)

    def _checked(self, path: Path, state: Dict[str, object], model: nn.Module,
                 phases: Sequence[Phase]) -> ResumePoint:
        """Load ``state`` (read from ``path``) into ``model`` and say where the run goes on."""
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
