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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import option
import utility
from data import build_test_sets, test_root
from data.benchmark import modcrop, named_files
from data.images import list_images, read_image, to_image, to_rgb_uint8, to_tensor, write_png
from data.protocols import Setting, find_hr_dir, protocol_settings, read_testset
from data.sample_photos import held_out_photos
from model import build_model
from model.checkpoint import detect_format, infer_authors_model, load_weights, read_checkpoint
from model.inference import predict
from trainer import bicubic_upscale, evaluate, inference_policy

PROTOCOL_SEED = 0    # noise seed of on-the-fly protocol sets: scripts/make_testsets.py's default
FIGURE_CROP = 128    # HR side of the crops in the comparison figures
Metrics = Dict[str, float]
ImageSource = Union[Path, np.ndarray]


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


def check_test_options(args: argparse.Namespace) -> None:
    """ValueError for test.py options that contradict each other."""
    for flag, value, least in (("--tile", args.tile, 1), ("--tile_overlap", args.tile_overlap, 0),
                               ("--embed_crop", args.embed_crop, 0)):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if args.input and args.protocol:
        raise ValueError("--input super-resolves your images; --protocol scores benchmark sets: use one")
    if not args.protocol:
        for flag, value in (("--protocol_noise", args.protocol_noise), ("--testsets", args.testsets)):
            if value is not None:
                raise ValueError(f"{flag} needs --protocol")
    elif args.noise:
        raise ValueError("--noise sets the single fixed test degradation; with --protocol use "
                         "--protocol_noise")
    if args.protocol_noise is not None and args.protocol_noise < 0:
        raise ValueError(f"--protocol_noise must be >= 0, got {args.protocol_noise}")
    if args.figure_images and not args.save_results:
        raise ValueError("--figure_images needs --save_results (figures are drawn from the saved SR images)")


# ------------------------------------------------------------------------------- own images
def read_input(path: Path) -> Tuple[np.ndarray, Optional[np.ndarray], bool]:
    """An image file -> (uint8 (H,W,3) RGB, uint8 (H,W) alpha or None, was grayscale).
    16-bit samples are scaled to 8 bits (``data.images`` convention)."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if raw is None:                       # missing, corrupt, or a format only imageio reads
        return read_image(path), None, False
    gray = raw.ndim == 2 or raw.shape[2] == 1
    alpha = None
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA)
        alpha = to_rgb_uint8(raw[:, :, 3], str(path))[:, :, 0]
    elif raw.ndim == 3 and raw.shape[2] == 3:
        raw = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return to_rgb_uint8(raw, str(path)), alpha, gray


def write_output(path: Path, sr: np.ndarray, alpha: Optional[np.ndarray], gray: bool) -> None:
    """uint8 (H,W,3) SR -> PNG: one channel (the mean) for grayscale input, RGBA with the
    alpha channel bicubic-upscaled to the SR size when the input had one."""
    if not (gray or alpha is not None):
        return write_png(path, sr)
    if gray:
        image = np.round(sr.astype(np.float64).mean(axis=2)).astype(np.uint8)
    else:
        size = (sr.shape[1], sr.shape[0])
        image = np.dstack([cv2.cvtColor(sr, cv2.COLOR_RGB2BGR),
                           cv2.resize(alpha, size, interpolation=cv2.INTER_CUBIC)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


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
    for path in files:
        rgb, alpha, gray = read_input(path)
        lr = to_tensor(rgb)[None].to(device)
        sr = to_image(predict(model, lr, **inference_policy(args)))
        target = output / f"{path.stem}.png"
        write_output(target, sr, alpha, gray)
        kind = "grayscale" if gray else "RGBA" if alpha is not None else "RGB"
        print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]} {kind}) -> {target} ({sr.shape[1]}x{sr.shape[0]})")


# ------------------------------------------------------------------------------- test sets
class SettingSet(Dataset):
    """One dataset under one protocol setting; items ``{"name", "lr" (3,h,w), "hr" (3,s*h,s*w)}``
    float 0..255. The LR is ``setting.degrade`` of the HR (noise seeded from PROTOCOL_SEED, the
    image and the setting, so it equals scripts/make_testsets.py's files) unless ``lr_images``
    (uint8 arrays read from a test-set folder) are given."""

    def __init__(self, dataset: str, setting: Setting, images: Sequence[Tuple[str, ImageSource]],
                 lr_images: Optional[Sequence[np.ndarray]] = None) -> None:
        self.name = f"{dataset}/{setting.label}"
        self.dataset = dataset
        self.setting = setting
        self.images = list(images)
        self.lr_images = None if lr_images is None else list(lr_images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, object]:
        name, source = self.images[index]
        hr = modcrop(read_image(source) if isinstance(source, Path) else source, self.setting.scale)
        if self.lr_images is None:
            lr = self.setting.degrade(hr, seed=PROTOCOL_SEED, image_name=name)
        else:
            lr = self.lr_images[index]
        if (lr.shape[0] * self.setting.scale, lr.shape[1] * self.setting.scale) != hr.shape[:2]:
            raise ValueError(f"{self.name}/{name}: LR {lr.shape[:2]} is not HR {hr.shape[:2]} / "
                             f"{self.setting.scale}")
        return {"name": name, "lr": to_tensor(lr), "hr": to_tensor(hr)}


class Row(NamedTuple):
    """One evaluated set: table row (setting label), column (dataset) and the set itself."""
    label: str
    dataset: str
    test_set: Dataset


def hr_images(args: argparse.Namespace) -> Dict[str, List[Tuple[str, ImageSource]]]:
    """HR images per --data_test dataset (the held-out sample photos without a test root)."""
    if args.dir_data is None and args.test_path is None:
        return {"photos": list(held_out_photos().items())}
    return {name: named_files(list_images(find_hr_dir(test_root(args), name, args.scale)))
            for name in args.data_test.split("+")}


def read_protocol_sets(root: Path, dataset: str, settings: Sequence[Setting]) -> List[SettingSet]:
    """The settings' sets of ``dataset`` from ROOT/<protocol>/<dataset>_x<scale>/."""
    protocol, scale = settings[0].protocol, settings[0].scale
    set_dir = Path(root) / protocol / f"{dataset}_x{scale}"
    grouped: Dict[str, list] = {}
    for pair in read_testset(set_dir, sorted({s.folder for s in settings})):
        grouped.setdefault(pair.setting.label, []).append(pair)
    missing = [s.label for s in settings if s.label not in grouped]
    if missing:
        raise FileNotFoundError(
            f"{set_dir} lacks the LR images of {', '.join(missing)}; write them with python "
            f"scripts/make_testsets.py --protocol {protocol} --name {dataset} --scale {scale} --out {root} "
            "--hr_dir HR_FOLDER")
    return [SettingSet(dataset, s, [(p.name, p.hr) for p in grouped[s.label]],
                       [p.lr for p in grouped[s.label]]) for s in settings]


def fixed_label(args: argparse.Namespace) -> str:
    """Row label of the single fixed degradation of the flags."""
    if args.blur_type == "iso_gaussian":
        blur = f"iso sig {args.sig:g}"
    else:
        blur = f"aniso {args.lambda_1:g}/{args.lambda_2:g} theta {args.theta:g}"
    return f"{args.degradation} {blur}" + (f" noise {args.noise:g}" if args.noise else "")


def build_rows(args: argparse.Namespace) -> List[Row]:
    """The (setting, dataset) sets to score, in table order (args has the checkpoint's scale)."""
    if not args.protocol:
        label = fixed_label(args)
        return [Row(label, s.name, s) for s in build_test_sets(args)]
    settings = protocol_settings(args.protocol, args.scale, args.protocol_noise)
    if args.testsets:
        per_dataset = {name: read_protocol_sets(Path(args.testsets), name, settings)
                       for name in args.data_test.split("+")}
    else:
        per_dataset = {name: [SettingSet(name, s, images) for s in settings]
                       for name, images in hr_images(args).items()}
    return [Row(s.label, name, sets[i]) for i, s in enumerate(settings)
            for name, sets in per_dataset.items()]


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
    check_test_options(args)
    utility.setup_logging()
    device = utility.select_device(args.cpu)
    model = load_model(args, device)
    if args.input:
        return super_resolve_files(model, args, device)
    resolved = argparse.Namespace(**{**vars(args), "model": model.name, "scale": model.scale})
    rows = build_rows(resolved)
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
    sys.exit(utility.run_cli(lambda: main()))
