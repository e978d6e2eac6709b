"""Evaluate a checkpoint (ours or the authors') on benchmark sets, or super-resolve your images.

    python test.py --pre_train CKPT --dir_data ROOT --data_test Set5+Set14
    python test.py --pre_train CKPT --input LR_IMAGE_OR_FOLDER --output OUT_DIR
"""
import argparse
import sys
from pathlib import Path

import torch

import option
import utility
from data import build_test_sets
from data.images import list_images, read_image, to_image, to_tensor, write_png
from model import build_model
from model.checkpoint import detect_format, infer_authors_model, load_weights, read_checkpoint
from model.inference import predict
from trainer import evaluate, inference_policy


def load_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The model of ``--pre_train``: its model and scale come from the checkpoint; --model and
    --scale, when given, must agree with it."""
    if not args.pre_train:
        raise ValueError("test.py needs --pre_train, a checkpoint file")
    checkpoint = read_checkpoint(args.pre_train)
    if detect_format(checkpoint) == "ours":
        name, scale = checkpoint["model_name"], int(checkpoint["scale"])
    else:
        name, scale = infer_authors_model(checkpoint)
    for flag, given, found in (("--model", args.model, name), ("--scale", args.scale, scale)):
        if given is not None and str(given).lower() != str(found).lower():
            raise ValueError(f"{args.pre_train} holds {name.upper()} x{scale} but {flag} {given} was given")
    model = build_model(name, scale=scale)
    load_weights(model, checkpoint)
    return model.to(device).eval()


@torch.no_grad()
def super_resolve_files(model, args: argparse.Namespace, device: torch.device) -> None:
    """Each image of --input (file or folder) -> OUTPUT/<same name>.png, s times larger."""
    source = Path(args.input)
    files = list_images(source) if source.is_dir() else [source]
    output = Path(args.output)
    for path in files:
        lr = to_tensor(read_image(path))[None].to(device)
        sr = predict(model, lr, **inference_policy(args))
        write_png(output / f"{path.stem}.png", to_image(sr))
        print(f"{path} ({lr.shape[-1]}x{lr.shape[-2]}) -> {output / (path.stem + '.png')}")


def print_table(metrics, model) -> str:
    lines = [f"| {model.name.upper()} x{model.scale} | PSNR (dB) | SSIM | bicubic PSNR | bicubic SSIM |",
             "|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['bicubic_psnr']:.2f} | "
                     f"{m['bicubic_ssim']:.4f} |")
    table = "\n".join(lines)
    print(table)
    return table


def main(argv=None) -> None:
    args = option.parse_args(argv, test=True)
    device = utility.select_device(args.cpu)
    model = load_model(args, device)
    if args.input:
        return super_resolve_files(model, args, device)
    resolved = argparse.Namespace(**{**vars(args), "model": model.name, "scale": model.scale})
    run_dir = utility.prepare_run_dir("experiment", args.save, resume=False)
    save_dir = run_dir / "results" if args.save_results else None
    metrics = evaluate(model, build_test_sets(resolved), device, with_bicubic=True,
                       save_dir=save_dir, **inference_policy(args))
    (run_dir / "results.md").write_text(print_table(metrics, model) + "\n")
    utility.write_json(run_dir / "results.json", {"checkpoint": args.pre_train, "metrics": metrics,
                                                  "options": vars(resolved)})


if __name__ == "__main__":
    sys.exit(utility.run_cli(lambda: main()))
