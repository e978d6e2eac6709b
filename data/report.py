"""Results: tables and figures of evaluations, ``model.evaluation.evaluate``'s scores of ``EvalSet``s.

A table has a row per setting and a column per dataset (``results.md``, ``.csv``, ``.json``). The
figures are PSNR per setting (one curve per dataset) and, per chosen image, crops of bicubic
upscaling | SR | HR for every setting, drawn from the SR images ``evaluate(save_dir=...)`` wrote.
"""
import csv
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import utility
from data import plots
from data.eval_set import EvalSet
from data.images import read_image, to_image, to_tensor
from data.metrics import psnr
from data.resize import bicubic_upscale
from data.setting import Setting

FIGURE_CROP = 128    # HR side of the crops in the comparison figures
Metrics = Dict[str, float]
log = logging.getLogger(__name__)


def by_setting(sets: Sequence[EvalSet], results: Dict[str, Metrics]) -> Dict[str, Dict[str, Metrics]]:
    """``evaluate``'s per-set results as {setting label: {dataset: metrics}}, in set order."""
    table: Dict[str, Dict[str, Metrics]] = {}
    for s in sets:
        table.setdefault(s.setting.label, {})[s.dataset] = results[s.name]
    return table


def markdown_table(table: Dict[str, Dict[str, Metrics]], prefix: str = "") -> str:
    """Rows = settings, columns = datasets, cells 'PSNR / SSIM' of ``prefix`` ('' or 'bicubic_')."""
    datasets = list(next(iter(table.values())))
    lines = ["| setting | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for label, cells in table.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{cells[d][prefix + 'psnr']:.2f} / {cells[d][prefix + 'ssim']:.4f}" for d in datasets) + " |")
    return "\n".join(lines)


def write_tables(run_dir: Path, sets: Sequence[EvalSet], results: Dict[str, Metrics], *,
                 title: str, notes: Sequence[str], record: dict) -> str:
    """results.md (``title``, ``notes`` lines, SR and bicubic tables), results.csv (a row per
    set) and results.json (``record`` plus the settings and the table) in ``run_dir``; returns
    the markdown. ``results`` must come from ``evaluate(..., with_bicubic=True)``."""
    table = by_setting(sets, results)
    text = "\n".join([f"# {title}", "", *notes, "", markdown_table(table), "",
                      "Bicubic (MATLAB) upscaling of the same LR:", "", markdown_table(table, "bicubic_"), ""])
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "results.md").write_text(text)
    with open(Path(run_dir) / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "noise", "dataset", "images", "psnr", "ssim", "bicubic_psnr",
                         "bicubic_ssim"])
        for s in sets:
            m = results[s.name]
            writer.writerow([s.setting.label, f"{s.setting.noise:g}", s.dataset, len(s)]
                            + [f"{m[k]:.4f}" for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")])
    settings = {s.setting.label: s.setting for s in sets}
    utility.write_json(Path(run_dir) / "results.json", {
        **record, "settings": [{"label": label, "noise": s.noise, "params": s.params}
                               for label, s in settings.items()], "results": table})
    return text


# ------------------------------------------------------------------------------- figures
def kernel_axis(settings: Sequence[Setting]) -> Tuple[List[str], Optional[List[float]], str]:
    """x tick labels, numeric x (iso kernels: the std-dev) or None (categorical), axis label."""
    labels = list(dict.fromkeys(s.suffix or s.label for s in settings))
    first = {s.suffix or s.label: s for s in reversed(settings)}
    if all("sigma_std" in first[label].params for label in labels):
        widths = [first[label].params["sigma_std"] for label in labels]
        return [f"{w:g}" for w in widths], widths, "isotropic kernel width sigma (std-dev, HR pixels)"
    return labels, None, "kernel (file suffix: anisotropic widths and angle)"


def plot_psnr_by_setting(path: Path, sets: Sequence[EvalSet], results: Dict[str, Metrics],
                         title: str) -> None:
    """PSNR per kernel, one curve per dataset (and noise level), saved as PNG at ``path``."""
    settings = list({s.setting.label: s.setting for s in sets}.values())
    labels, x, xlabel = kernel_axis(settings)
    several_levels = len({s.noise for s in settings}) > 1
    curves: Dict[str, List[float]] = {}
    for s in sets:
        name = s.dataset + (f" noise {s.setting.noise:g}" if several_levels else "")
        curves.setdefault(name, []).append(results[s.name]["psnr"])
    plots.plot_metric_by_setting(path, labels, curves, x=x, xlabel=xlabel, ylabel="PSNR (dB)",
                                   title=title)


def busiest_window(image: np.ndarray, size: int) -> Tuple[int, int]:
    """(top, left) of the ``size`` x ``size`` window of uint8 (H,W,3) with the most gradient."""
    gray = image.astype(np.float64).mean(axis=2)
    energy = np.zeros_like(gray)
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(size // 4, 1)
    best, where = -1.0, (0, 0)
    for top in range(0, image.shape[0] - size + 1, step):
        for left in range(0, image.shape[1] - size + 1, step):
            total = (integral[top + size, left + size] - integral[top, left + size]
                     - integral[top + size, left] + integral[top, left])
            if total > best:
                best, where = total, (top, left)
    return where


def _comparison_row(eval_set: EvalSet, index: int, sr_dir: Path, crop: Optional[tuple] = None):
    """([bicubic, SR, HR] crops, their titles, the crop) of image ``index``; ``crop`` (two
    slices) defaults to the ``FIGURE_CROP`` square where the HR has the most detail."""
    name, lr, hr = eval_set.pair(index)
    scale = eval_set.setting.scale
    bicubic = to_image(bicubic_upscale(to_tensor(lr)[None], scale))
    sr = read_image(Path(sr_dir) / eval_set.name / f"{name}.png")
    if crop is None:
        size = min(FIGURE_CROP, *hr.shape[:2])
        top, left = busiest_window(hr, size)
        crop = (slice(top, top + size), slice(left, left + size))
    titles = [f"bicubic (MATLAB) {psnr(bicubic, hr, crop_border=scale):.2f} dB",
              f"SR {psnr(sr, hr, crop_border=scale):.2f} dB", "HR"]
    return [bicubic[crop], sr[crop], hr[crop]], titles, crop


def plot_comparisons(folder: Path, sets: Sequence[EvalSet], sr_dir: Path,
                     names: Optional[Sequence[str]] = None) -> List[Path]:
    """``folder/compare_<dataset>_<image>.png`` for the images ``names`` (default: each
    dataset's first): a row per setting of bicubic upscaling | SR | HR crops, the SR read from
    ``sr_dir/<set name>/<image>.png`` as ``evaluate(save_dir=sr_dir)`` wrote it. Returns the
    files written."""
    written = []
    for dataset in dict.fromkeys(s.dataset for s in sets):
        rows = [s for s in sets if s.dataset == dataset]
        available = rows[0].image_names()
        for name in [n for n in names if n in available] if names else available[:1]:
            panels, titles, crop = [], [], None
            for s in rows:
                row, row_titles, crop = _comparison_row(s, available.index(name), sr_dir, crop)
                panels.append(row)
                titles.append(row_titles)
            path = Path(folder) / f"compare_{dataset}_{name}.png"
            plots.plot_image_grid(path, panels, titles, row_labels=[s.setting.label for s in rows])
            written.append(path)
    unknown = [n for n in names or () if not any(n in s.image_names() for s in sets)]
    if unknown:
        log.warning(f"no image named {', '.join(unknown)} in the evaluated sets")
    return written


def plot_set_comparison(path: Path, eval_set: EvalSet, sr_dir: Path, max_images: int = 4) -> Path:
    """``path``: a row per image (the first ``max_images``) of bicubic upscaling | SR | HR crops
    of one set, the SR read from ``sr_dir`` as in ``plot_comparisons``."""
    rows = [_comparison_row(eval_set, i, sr_dir) for i in range(min(len(eval_set), max_images))]
    plots.plot_image_grid(path, [r[0] for r in rows], [r[1] for r in rows],
                            row_labels=eval_set.image_names()[:len(rows)])
    return Path(path)
