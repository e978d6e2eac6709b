"""Results of a training run: ``psnr.csv`` (validation scores per epoch and test set), its
figure ``psnr.png``, ``losses.csv`` (the global batch's losses and contrastive accuracy of every
iteration) and its figure ``losses.png``.

Each CSV file is a ``CsvTable``; a resumed run first drops the rows it is about to redo
(``RunRecords.forget_after``), so every epoch and iteration is recorded once.
"""
import csv
import math
from pathlib import Path
from typing import Collection, Dict, List, Optional, Sequence, Union

from data.plots import plot_curves, plot_losses

PSNR_FIELDS = ("epoch", "phase", "dataset", "psnr", "ssim", "bicubic_psnr")
LOSS_FIELDS = ("epoch", "iteration", "phase", "lr", "applied", "contrastive_accuracy", "total",
               "contrastive")


class CsvTable:
    """A CSV file of one row per record with fixed ``fields`` (psnr.csv, losses.csv); rows of
    an ``epoch`` (and ``iteration``) can be dropped when a resumed run redoes them."""

    def __init__(self, path: Union[str, Path], fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)

    def read(self) -> List[Dict[str, str]]:
        """The rows, as strings; [] when there is no table yet."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def write(self, rows: Sequence[Dict[str, object]], mode: str = "a") -> None:
        """Append ``rows`` (mode "a") or replace the table with them ("w"). A table written
        with other columns (by an earlier version) is first rewritten with these."""
        if mode == "a" and self.path.exists() and self._header() != list(self.fields):
            self.write(self.read(), mode="w")
        new = mode == "w" or not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, mode, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerows(rows)
        except OSError as error:                # a full disk's error does not name the file
            raise OSError(f"cannot write {self.path} ({error.strerror or error})") from error

    def _header(self) -> List[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f), [])

    def forget_after(self, epoch: int, iteration: int = 0) -> None:
        """Drop the rows after (``epoch``, ``iteration``): a run killed after writing them but
        before its checkpoint redoes that work on resume and must record it once. Rows without
        an iteration column count as the end of their epoch."""
        def done(row: Dict[str, str]) -> bool:
            row_epoch = int(row["epoch"])
            if "iteration" not in row or not iteration:
                return row_epoch <= epoch
            return row_epoch < epoch + 1 or (row_epoch == epoch + 1 and int(row["iteration"]) <= iteration)

        rows = self.read()
        kept = [row for row in rows if done(row)]
        if len(kept) < len(rows):
            self.write(kept, mode="w")


class RunRecords:
    """psnr.csv, psnr.png and losses.csv in ``run_dir``; ``loss_names``: the criterion's loss
    terms, extra columns of losses.csv."""

    def __init__(self, run_dir: Union[str, Path], loss_names: Sequence[str] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.psnr_table = CsvTable(self.run_dir / "psnr.csv", PSNR_FIELDS)
        self.loss_table = CsvTable(self.run_dir / "losses.csv", LOSS_FIELDS + tuple(loss_names))

    def forget_after(self, epoch: int, iteration: int = 0) -> None:
        """Drop what was recorded after ``epoch`` finished epochs and ``iteration`` iterations
        of the next (``CsvTable.forget_after``)."""
        self.psnr_table.forget_after(epoch)
        self.loss_table.forget_after(epoch, iteration)

    def best_psnr(self, dataset: str, phases: Optional[Collection[str]] = None) -> float:
        """The best validation PSNR recorded on ``dataset`` (in ``phases``, by name, when given;
        -inf before any)."""
        return max((float(r["psnr"]) for r in self.psnr_table.read() if r["dataset"] == dataset
                    and (phases is None or r["phase"] in phases)), default=-math.inf)

    def write_step(self, epoch: int, iteration: int, phase: str, lr: float, applied: bool,
                   losses: Dict[str, float], accuracy: Optional[float] = None) -> None:
        """The losses.csv row of one training step: its phase's name, learning rate, whether
        the update was applied, the global batch's contrastive ``accuracy`` (empty without
        one) and loss components."""
        self.loss_table.write([{"epoch": epoch, "iteration": iteration, "phase": phase,
                                "lr": lr, "applied": int(applied),
                                "contrastive_accuracy": "" if accuracy is None else accuracy, **losses}])

    def write_validation(self, epoch: int, phase: str, metrics: Dict[str, Dict[str, float]],
                         title: str) -> None:
        """The psnr.csv rows of the scores after ``epoch`` (``{test set: {"psnr", "ssim",
        "bicubic_psnr", ...}}``), then psnr.png redrawn with ``title``."""
        self.psnr_table.write([{"epoch": epoch, "phase": phase, "dataset": name,
                                "psnr": f"{m['psnr']:.4f}", "ssim": f"{m['ssim']:.5f}",
                                "bicubic_psnr": f"{m['bicubic_psnr']:.4f}"}
                               for name, m in metrics.items()])
        self.plot_psnr(title)

    def plot_psnr(self, title: str) -> None:
        """psnr.png: PSNR per epoch, one curve per test set."""
        curves: Dict[str, List[float]] = {}
        rows = self.psnr_table.read()
        for row in rows:
            curves.setdefault(row["dataset"], []).append(float(row["psnr"]))
        plot_curves(self.run_dir / "psnr.png", sorted({int(r["epoch"]) for r in rows}), curves,
                    xlabel="epoch", ylabel="PSNR (dB)", title=title)

    def plot_losses(self, title: str) -> None:
        """losses.png from losses.csv: each loss component over the iterations of the run,
        smoothed, on a log axis, with the phases marked, and the contrastive accuracy below
        when the run has one (``data.plots.plot_losses``)."""
        rows = self.loss_table.read()
        if not rows:
            return
        names = list(self.loss_table.fields[LOSS_FIELDS.index("total"):])

        def column(name: str) -> List[float]:
            return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

        losses = {name: column(name) for name in names}
        accuracy = column("contrastive_accuracy")
        phases = [(i + 1, r["phase"]) for i, r in enumerate(rows)
                  if i == 0 or r["phase"] != rows[i - 1]["phase"]]
        plot_losses(self.run_dir / "losses.png", losses, phases, title=title,
                    accuracy=accuracy if any(not math.isnan(a) for a in accuracy) else None)
