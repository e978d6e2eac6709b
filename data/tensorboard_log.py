"""A training run's TensorBoard event files, ``<run>/tensorboard/`` (--use_tb_logger).

Every value is logged against one step axis, the iteration index over the whole run (epoch e's
iteration i is step ``(e - 1) * iterations_per_epoch + i``); what is measured once per epoch
(timing, codebook usage, validation, image crops) is logged at the step of the epoch's last
iteration. A resumed run opens the folder with ``purge_step`` = the first step it redoes: the
events a killed run wrote after its checkpoint are then hidden from TensorBoard, and the curves
go on without duplicate steps. Tags:

    loss/<component>             every loss term of the global batch (loss/total included)
    train/lr                     the learning rate
    train/contrastive_accuracy   top-1 accuracy of the contrastive task (models with one)
    time/step_seconds            per epoch: mean seconds per iteration
    time/loader_wait_share       per epoch: share of that time spent waiting for data
    codebook/perplexity          per epoch: effective number of CSC codebook rows used
    codebook/rows_for_90pct      per epoch: fewest rows holding 90% of the attention
    val/<set>/psnr, .../ssim     per validation, with .../bicubic_psnr, .../bicubic_ssim
    crops/<set>/<image>          LR (nearest-neighbour upscaled) | SR | HR crops, uint8 RGB

Values come in as plain numbers and arrays; nothing here knows the network.
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

Crop = Tuple[str, np.ndarray, np.ndarray, np.ndarray]     # name, LR, SR, HR (uint8 (H,W,3))
GAP = 4                                                    # white pixels between the panels


class TensorBoardLog:
    """The event writer of one run (only where ``enabled``: rank 0 with --use_tb_logger; a
    disabled one ignores every call). ``purge_step``: the first step a resumed run writes again
    (None for a fresh run). Event files are flushed by ``flush``, which the trainer calls
    before every checkpoint, so what a checkpoint holds is also in the curves."""

    def __init__(self, folder: Union[str, Path], *, enabled: bool,
                 purge_step: Optional[int] = None) -> None:
        self.folder = Path(folder)
        self.writer = None
        if not enabled:
            return
        SummaryWriter = summary_writer_class()
        try:
            self.writer = SummaryWriter(str(self.folder), purge_step=purge_step, flush_secs=60)
        except OSError as error:
            raise OSError(f"cannot write TensorBoard events to {self.folder} "
                          f"({error.strerror or error})") from error

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, step: int, values: Dict[str, Optional[float]]) -> None:
        """``{tag: value}`` at ``step``; None values are left out."""
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def training_step(self, step: int, losses: Dict[str, float], lr: float,
                      accuracy: Optional[float]) -> None:
        """One iteration: its loss components, learning rate and contrastive accuracy."""
        self.scalars(step, {**{f"loss/{name}": value for name, value in losses.items()},
                            "train/lr": lr, "train/contrastive_accuracy": accuracy})

    def validation(self, step: int, metrics: Dict[str, Dict[str, float]]) -> None:
        """``{set: {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}}`` as val/<set>/<metric>."""
        self.scalars(step, {f"val/{name}/{metric}": value for name, scores in metrics.items()
                            for metric, value in scores.items()})

    def crops(self, step: int, set_name: str, crops: Sequence[Crop]) -> None:
        """One image per crop: LR | SR | HR side by side (``side_by_side``)."""
        if self.writer is None:
            return
        for name, lr, sr, hr in crops:
            self.writer.add_image(f"crops/{set_name}/{name}", side_by_side(lr, sr, hr), step,
                                  dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; ValueError saying what to do when the
    tensorboard package is missing (checked before a run writes anything)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError(f"--use_tb_logger needs the tensorboard package ({error}): pip install "
                         "tensorboard, or pass --use_tb_logger false") from error
    return SummaryWriter


def side_by_side(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """uint8 (h,w,3) LR and (H,W,3) SR and HR, H = s*h -> (H, 3W + 2*GAP, 3) uint8: the LR
    enlarged s times by pixel repetition, SR and HR, separated by white columns."""
    height, width = hr.shape[:2]
    factor = height // lr.shape[0]
    enlarged = np.repeat(np.repeat(lr, factor, axis=0), factor, axis=1)[:height, :width]
    gap = np.full((height, GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([enlarged, gap, sr, gap, hr], axis=1)
