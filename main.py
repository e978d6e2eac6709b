"""Train CDSR, DASR or KDSR: ``python main.py`` runs a short CPU demo; see README.md for the recipes.

One process per device: ``torchrun --nproc_per_node N main.py ...`` (see README, 'Several GPUs').
"""
import importlib.util
import sys
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

import option
import utility
from data import build_test_sets, build_train_set
from data.report import plot_set_comparison
from loss import make_loss
from model import make_model
from model.checkpoint import load_start_weights
from model.evaluation import evaluate, inference_policy
from model.parallel import (ProcessGroup, convert_to_global_batchnorm, process_group_from_env,
                            reports_errors)
from trainer import Trainer, training_session


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if option.wants_test_only(argv):
        return run_test_py(argv)
    args = option.parse_args(argv)
    group, device = start(args)
    train_set, test_sets = build_train_set(args, full_check=group.local_rank == 0), build_test_sets(args)
    model = build_network(args, device)
    trainer = Trainer(args, model, make_loss(args, model), train_set, test_sets, device, group)
    with training_session(trainer) as stop:
        metrics = trainer.fit(stop)
    if group.is_main:
        report(trainer, metrics)


def start(args) -> Tuple[ProcessGroup, torch.device]:
    """This process's place in the job (torchrun's environment; nothing is joined yet), its
    logging (errors only on ranks other than 0), its device, and the seed of the weights."""
    group = process_group_from_env()
    utility.setup_logging(quiet=not group.is_main)
    torch.manual_seed(args.seed)
    return group, utility.select_device(args.cpu, group.local_rank if group.distributed else None)


def build_network(args, device: torch.device) -> nn.Module:
    """The paper-size model of the options on ``device`` (for a KDSR student, the teacher and
    student of its distillation run): with --sync_bn its BatchNorms over the global batch, with
    --pre_train (and KDSR's --pre_train_TA, --pre_train_ST) the given weights, ours or the
    authors' (``load_start_weights``)."""
    model = make_model(args)
    if args.sync_bn:
        convert_to_global_batchnorm(model)
    model.to(device)
    for flag, path in (("--pre_train", args.pre_train), ("--pre_train_TA", args.pre_train_TA),
                       ("--pre_train_ST", args.pre_train_ST)):
        if path:
            utility.get_logger().info(f"{flag}: {load_start_weights(model, flag, path)}")
    return model


def report(trainer: Trainer, metrics: Dict[str, Dict[str, float]]) -> None:
    """The final scores beside MATLAB bicubic upscaling, the final model's (with --ema_decay:
    the moving average's) SR images of the validation sets in the run folder's results/ and a figure of bicubic | SR | HR crops per set
    in figures/, named in the last line printed."""
    minutes = trainer.clock.elapsed() / 60
    for name, m in metrics.items():
        print(f"{name}: PSNR {m['psnr']:.2f} dB / SSIM {m['ssim']:.4f}; bicubic (MATLAB) upscaling of the "
              f"same LR: {m['bicubic_psnr']:.2f} dB / {m['bicubic_ssim']:.4f} ({minutes:.1f} min)")
    run_dir = trainer.run_dir
    evaluate(trainer.scored_model(), trainer.test_sets, trainer.device, save_dir=run_dir / "results",
             **inference_policy(trainer.args))
    figures = [plot_set_comparison(run_dir / "figures" / f"compare_{s.name}.png", s, run_dir / "results")
               for s in trainer.test_sets]
    print(f"bicubic | SR | HR crops: {', '.join(str(path) for path in figures)}")


def run_test_py(argv) -> None:
    """``main.py --test_only ...`` (EDSR's habit): score as ``test.py`` does, without the
    training flags (said once)."""
    arguments, dropped = option.test_command(argv)
    if dropped:
        utility.setup_logging().info(f"--test_only: ignoring the training flags {' '.join(dropped)}")
    spec = importlib.util.spec_from_file_location("test_py", Path(__file__).with_name("test.py"))
    entry = importlib.util.module_from_spec(spec)  # by path: 'test' is also a standard-library package
    spec.loader.exec_module(entry)
    entry.main(arguments)


if __name__ == "__main__":
    sys.exit(utility.run_cli(main, "interrupted; the last finished epoch is saved (continue with "
                                   "--resume)", reports_errors=reports_errors))
