"""Score a checkpoint (ours or the authors') on benchmark sets, or super-resolve your images.

    python test.py --pre_train CKPT --test_path ROOT --data_test Set5+Set14
    python test.py --pre_train CKPT --protocol cdsr --test_path ROOT --data_test Set5+Set14 [--save_results]
    python test.py --pre_train CKPT --input LR_IMAGE_OR_FOLDER --output OUT_DIR [--chop] [--self_ensemble]

Scoring goes through ``trainer.evaluate``, the loop training validation uses. Without
``--protocol`` the LR images come from the one fixed degradation of --sig/--lambda_*/--theta/
--noise; with it, from every setting of the protocol (``data/protocols.py``), generated on the
fly or read from ``--testsets``. Tables (rows = settings, columns = datasets) are printed and
written to ``experiment/<save>/results.{md,csv,json}``; --save_results adds the SR images and
figures.
"""
import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import option
import utility
from data import build_eval_rows
from data.images import list_images, read_image, read_image_and_alpha, to_image, to_tensor, write_png_like
from data.testsets import Row
from data.protocols import Setting
from model import build_model
from model.checkpoint import detect_format, infer_authors_model, load_weights, read_checkpoint
from model.inference import predict
from trainer import bicubic_upscale, evaluate, inference_policy

FIGURE_CROP = 128    # HR side of the crops in the comparison figures
Metrics = Dict[str, float]


def load_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The model of ``--pre_train``: its model, scale (and a small model's widths, our format's
    ``model_kwargs``) come from the checkpoint; --model and --scale, when given, must agree."""
    if not args.pre_train:
        raise ValueError("test.py needs --pre_train, a checkpoint file")
    checkpoint = read_checkpoint(args.pre_train)
    kwargs = {}
    if detect_format(checkpoint) == "ours":
        name, scale = checkpoint["model_name"], int(checkpoint["scale"])
        kwargs = dict(checkpoint.get("model_kwargs") or {})
    else:
        name, scale = infer_authors_model(checkpoint)
    for flag, given, found in (("--model", args.model, name), ("--scale", args.scale, scale)):
        if given is not None and str(given).lower() != str(found).lower():
            raise ValueError(f"{args.pre_train} holds {name.upper()} x{scale} but {flag} {given} was given")
    model = build_model(name, scale=scale, **kwargs)
    load_weights(model, checkpoint)
    return model.to(device).eval()


# ------------------------------------------------------------------------------- own images
@torch.no_grad()
def super_resolve_files(model: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """Each image of --input (file or folder) -> OUTPUT/<stem>.png, s times larger."""
    source = Path(args.input)
    files = list_images(source) if source.is_dir() else [source]
    stems = [path.stem for path in files]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise ValueError(f"{source} holds several images named {', '.join(clashes)} (different "
                         "extensions); their outputs would overwrite each other")
    output = Path(args.output)
    for path in files:
        if (output / f"{path.stem}.png").resolve() == path.resolve():
            raise ValueError(f"--output {output} would overwrite the input {path}; choose another folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create --output {output}: {error.strerror}; choose a writable "
                         "folder") from error
    for path in files:
        rgb, alpha, gray = read_image_and_alpha(path)
        lr = to_tensor(rgb)[None].to(device)
        sr = to_image(predict(model, lr, **inference_policy(args)))
        target = output / f"{path.stem}.png"
        write_png_like(target, sr, alpha, gray)
        kind = "grayscale" if gray else "RGBA" if alpha is not None else "RGB"
        print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]} {kind}) -> {target} ({sr.shape[1]}x{sr.shape[0]})")


# ------------------------------------------------------------------------------- reports
def by_setting(rows: Sequence[Row], results: Dict[str, Metrics]) -> Dict[str, Dict[str, Metrics]]:
    """``evaluate``'s per-set results as {setting label: {dataset: metrics}}, in row order."""
    table: Dict[str, Dict[str, Metrics]] = {}
    for row in rows:
        table.setdefault(row.label, {})[row.dataset] = results[row.test_set.name]
    return table


def markdown_table(table: Dict[str, Dict[str, Metrics]], prefix: str = "") -> str:
    """Rows = settings, columns = datasets, cells 'PSNR / SSIM' of ``prefix`` ('' or 'bicubic_')."""
    datasets = list(next(iter(table.values())))
    lines = ["| setting | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for label, cells in table.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{cells[d][prefix + 'psnr']:.2f} / {cells[d][prefix + 'ssim']:.4f}" for d in datasets) + " |")
    return "\n".join(lines)


def describe_policy(policy: Dict[str, object]) -> str:
    parts = []
    if policy["tile"]:
        pooling = "whole-image DQA means" if policy["global_stats"] else "per-tile DQA means"
        parts.append(f"tiles of {policy['tile']} LR px, overlap {policy['overlap']}, "
                     f"embedding from the centred {policy['embed_crop'] or 'whole'} crop, {pooling}")
    if policy["ensemble"]:
        parts.append("x8 self-ensemble")
    return "; ".join(parts) or "whole image at once (the authors' eval forward)"


def write_reports(run_dir: Path, rows: Sequence[Row], results: Dict[str, Metrics],
                  model: nn.Module, args: argparse.Namespace) -> str:
    """results.md / results.csv / results.json in ``run_dir``; returns the markdown."""
    table = by_setting(rows, results)
    policy = inference_policy(args)
    what = f"the {args.protocol} protocol" if args.protocol else "a fixed degradation"
    source = f"LR from {args.testsets}" if args.testsets else "LR generated on the fly"
    text = "\n".join([
        f"# {model.name.upper()} x{model.scale} on {what}", "",
        f"Checkpoint `{args.pre_train}`; {source}; inference: {describe_policy(policy)}.",
        f"PSNR (dB) / SSIM on the Y channel (BT.601), {model.scale} border pixels shaved.", "",
        markdown_table(table), "", "Bicubic upscaling of the same LR:", "",
        markdown_table(table, "bicubic_"), ""])
    (run_dir / "results.md").write_text(text)
    settings = {row.label: getattr(row.test_set, "setting", None) for row in rows}
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "noise", "dataset", "images", "psnr", "ssim", "bicubic_psnr",
                         "bicubic_ssim"])
        for row in rows:
            m = results[row.test_set.name]
            noise = settings[row.label].noise if settings[row.label] else args.noise
            writer.writerow([row.label, f"{noise:g}", row.dataset, len(row.test_set)]
                            + [f"{m[k]:.4f}" for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")])
    utility.write_json(run_dir / "results.json", {
        "checkpoint": args.pre_train, "model": model.name, "scale": model.scale,
        "protocol": args.protocol, "testsets": args.testsets, "policy": policy,
        "settings": [{"label": label, "noise": s.noise, "params": s.params} if s else {"label": label}
                     for label, s in settings.items()],
        "results": table, "options": vars(args)})
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


def plot_protocol(run_dir: Path, rows: Sequence[Row], results: Dict[str, Metrics], title: str) -> None:
    """figures/psnr_vs_kernel.png: one curve per dataset (and noise level)."""
    settings = list({row.label: row.test_set.setting for row in rows}.values())
    labels, x, xlabel = kernel_axis(settings)
    curves: Dict[str, List[float]] = {}
    levels = sorted({s.noise for s in settings})
    for row in rows:
        name = row.dataset + (f" noise {row.test_set.setting.noise:g}" if len(levels) > 1 else "")
        curves.setdefault(name, []).append(results[row.test_set.name]["psnr"])
    utility.plot_metric_by_setting(run_dir / "figures" / "psnr_vs_kernel.png", labels, curves, x=x,
                                   xlabel=xlabel, ylabel="PSNR (dB)", title=title)


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


def plot_comparisons(run_dir: Path, rows: Sequence[Row], save_dir: Path, scale: int,
                     names: Optional[Sequence[str]]) -> List[Path]:
    """figures/compare_<dataset>_<image>.png: per setting, crops of bicubic | SR | HR."""
    written = []
    for dataset in dict.fromkeys(row.dataset for row in rows):
        sets = [row for row in rows if row.dataset == dataset]
        available = [name for name, _ in sets[0].test_set.images]
        chosen = [n for n in names if n in available] if names else available[:1]
        for name in chosen:
            index = available.index(name)
            panels, titles, crop = [], [], None
            for row in sets:
                item = row.test_set[index]
                hr = to_image(item["hr"])
                bicubic = to_image(bicubic_upscale(item["lr"][None], scale))
                sr = read_image(save_dir / row.test_set.name / f"{name}.png")
                if crop is None:
                    size = min(FIGURE_CROP, *hr.shape[:2])
                    top, left = busiest_window(hr, size)
                    crop = (slice(top, top + size), slice(left, left + size))
                panels.append([bicubic[crop], sr[crop], hr[crop]])
                titles.append([f"bicubic {utility.psnr(bicubic, hr, crop_border=scale):.2f} dB",
                               f"SR {utility.psnr(sr, hr, crop_border=scale):.2f} dB", "HR"])
            path = run_dir / "figures" / f"compare_{dataset}_{name}.png"
            utility.plot_image_grid(path, panels, titles, row_labels=[row.label for row in sets])
            written.append(path)
    unknown = [n for n in names or () if not any(n in [m for m, _ in r.test_set.images] for r in rows)]
    if unknown:
        utility.get_logger().warning(f"--figure_images: no image named {', '.join(unknown)}")
    return written


# ------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = option.parse_args(argv, test=True)
    utility.setup_logging()
    device = utility.select_device(args.cpu)
    model = load_model(args, device)
    if args.input:
        return super_resolve_files(model, args, device)
    resolved = argparse.Namespace(**{**vars(args), "model": model.name, "scale": model.scale})
    rows = build_eval_rows(resolved)
    run_dir = utility.prepare_run_dir("experiment", args.save, resume=False)
    save_dir = run_dir / "results" if args.save_results else None
    results = evaluate(model, [row.test_set for row in rows], device, with_bicubic=True,
                       save_dir=save_dir, **inference_policy(args))
    print(write_reports(run_dir, rows, results, model, resolved))
    if save_dir is not None:
        title = f"{model.name.upper()} x{model.scale}, {args.protocol or 'fixed degradation'}"
        if args.protocol and len({row.label for row in rows}) > 1:
            plot_protocol(run_dir, rows, results, title)
        names = args.figure_images.split("+") if args.figure_images else None
        plot_comparisons(run_dir, rows, save_dir, model.scale, names)
    print(f"tables, SR images and figures: {run_dir}" if save_dir else f"tables: {run_dir}")


if __name__ == "__main__":
    sys.exit(utility.run_cli(main))
