"""Score a checkpoint (ours or the authors') on benchmark sets, or super-resolve your images.

    python test.py --pre_train CKPT --test_path ROOT --data_test Set5+Set14
    python test.py --pre_train CKPT --protocol cdsr --test_path ROOT --data_test Set5+Set14 [--save_results]
    python test.py --pre_train CKPT --input LR_IMAGE_OR_FOLDER --output OUT_DIR [--chop] [--self_ensemble] [--bf16]
    python test.py --resume N [--save RUN] ...      # epoch N of a training run, ours or DASR's layout

Scoring goes through ``model.evaluation.evaluate``, the loop training validation uses, on the sets of
``data.build_test_sets`` (one fixed degradation, as validation) or ``data.build_protocol_sets``
(every setting of a protocol, generated or read from ``--testsets``). Tables (rows = settings,
columns = datasets) are printed and written to ``experiment/<save>/results.{md,csv,json}``;
--save_results adds the SR images and figures. A checkpoint of a run with --ema_decay is scored
with its moving average of the weights (the log says so); --no_ema scores its trained weights.
"""
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

import option
import utility
from data import build_protocol_sets, build_test_sets
from data.images import output_pairs, read_image_and_alpha, to_image, to_tensor, write_png_like
from data.report import plot_comparisons, plot_psnr_by_setting, write_tables
from model.checkpoint import load_model
from model.evaluation import evaluate, inference_policy
from model.inference import describe_policy, predict
from model.parallel import data_parallel_devices
from model.precision import warn_if_emulated
from model.run_checkpoints import epoch_checkpoints


def super_resolve_files(model, args, device) -> None:
    """Each image of --input (a file or a folder) -> OUTPUT/<stem>.png, s times larger, in its kind."""
    if args.bf16:
        warn_if_emulated(device, torch.bfloat16, "--bf16")
    for source, target in output_pairs(args.input, args.output):
        rgb, alpha, gray = read_image_and_alpha(source)
        try:
            sr = to_image(predict(model, to_tensor(rgb)[None].to(device), bf16=args.bf16,
                                  **inference_policy(args)))
        except ValueError as error:                 # e.g. smaller than CDSR's encoder reads
            raise ValueError(f"{source}: {error}") from error
        write_png_like(target, sr, alpha, gray)
        kind = "grayscale" if gray else "RGBA" if alpha is not None else "RGB"
        print(f"{source} ({rgb.shape[1]}x{rgb.shape[0]} {kind}) -> {target} ({sr.shape[1]}x{sr.shape[0]})")


def checkpoint_and_results_folder(args) -> Tuple[Path, Path]:
    """(the checkpoint to score, the folder for its tables): --pre_train and experiment/SAVE/,
    or for --resume N epoch N of the training run SAVE (``epoch_checkpoints``) and that run
    folder's test/ (the training run itself stays as it is)."""
    if not args.resume:
        return Path(args.pre_train), Path("experiment") / (args.save or "test")
    tried = epoch_checkpoints(args.save or "blindsr", args.resume, scale=args.scale,
                              sample_mode=args.sample_mode, blur_type=args.blur_type)
    found = next((path for path in tried if path.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"--resume {args.resume}: no checkpoint at {', '.join(map(str, tried))}; "
                                "name the training run with --save (and --scale), or pass --pre_train CKPT")
    utility.get_logger().info(f"--resume {args.resume}: scoring {found}")
    return found, found.parent.parent / "test"


def scoring_devices(n_gpus: int, device: torch.device) -> List[torch.device]:
    """--n_GPUs CUDA devices to score on, one image each at a time (one device on the CPU)."""
    if n_gpus > 1 and device.type != "cuda":
        utility.get_logger().info(f"--n_GPUs {n_gpus}: no CUDA device in use; scoring on the {device.type}")
    return [torch.device("cuda", i) for i in data_parallel_devices(n_gpus, device)] or [device]


def score(model, args, device, checkpoint: Path, results_folder: Path) -> None:
    """Tables (and with --save_results SR images and figures) in ``results_folder``."""
    sets = build_protocol_sets(args, model.scale) if args.protocol else build_test_sets(args, model.scale)
    run_dir = utility.prepare_run_dir(results_folder.parent, results_folder.name, resume=False)
    sr_dir = run_dir / "results" if args.save_results else None
    policy = inference_policy(args)
    results = evaluate(model, sets, device, with_bicubic=True, save_dir=sr_dir,
                       devices=scoring_devices(args.n_GPUs, device), **policy)
    what = f"the {args.protocol} protocol" if args.protocol else "a fixed degradation"
    source = f"LR from {args.testsets}" if args.testsets else "LR generated on the fly"
    notes = [f"Checkpoint `{checkpoint}`; {source}; inference: {describe_policy(policy)}.",
             f"PSNR (dB) / SSIM on the Y channel (BT.601), {model.scale} border pixels shaved."]
    if model.needs_hr:
        notes.append(f"{model.name.upper()} is a distillation teacher: its encoder read each "
                     "image's HR (as its authors validate it), so these scores are not blind.")
    title = f"{model.name.upper()} x{model.scale} on {what}"
    print(write_tables(run_dir, sets, results, title=title, notes=notes,
        record={"checkpoint": str(checkpoint), "model": model.name, "scale": model.scale,
                "protocol": args.protocol, "testsets": args.testsets, "policy": policy,
                "options": vars(args)}))
    if sr_dir is not None:
        if len({s.setting.label for s in sets}) > 1:
            plot_psnr_by_setting(run_dir / "figures" / "psnr_vs_kernel.png", sets, results,
                                 f"{model.name.upper()} x{model.scale}, {args.protocol}")
        names = args.figure_images.split("+") if args.figure_images else None
        plot_comparisons(run_dir / "figures", sets, sr_dir, names)
    print(f"tables, SR images and figures: {run_dir}" if sr_dir else f"tables: {run_dir}")


def check_widths(model, args, checkpoint: Path) -> None:
    """--n_feats/--n_blocks/--n_resblocks (KDSR's test scripts pass them) against the model the
    checkpoint holds (ValueError when they differ)."""
    given = option.given_widths(args)
    held = {k: model.hparams.get(k) for k in given}
    if held != given:
        raise ValueError(f"{checkpoint} holds {model.name.upper()} ({option.widths_text(held)}), "
                         f"not {option.widths_text(given)} as requested")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = option.parse_args(argv, test=True)
    utility.setup_logging()
    device = utility.select_device(args.cpu)
    checkpoint, results_folder = checkpoint_and_results_folder(args)
    model = load_model(checkpoint, device, model_name=args.model, scale=args.scale, ema=not args.no_ema)
    check_widths(model, args, checkpoint)
    if args.input:
        if args.n_GPUs > 1:
            utility.get_logger().info(f"--n_GPUs {args.n_GPUs}: --input runs on one device")
        super_resolve_files(model, args, device)
    else:
        score(model, args, device, checkpoint, results_folder)


if __name__ == "__main__":
    sys.exit(utility.run_cli(main))
