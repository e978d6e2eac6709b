"""Train CDSR or DASR: ``python main.py`` runs a short CPU demo; see README.md for the recipes.

One process per device: ``torchrun --nproc_per_node N main.py ...`` (see README, 'Several GPUs').
"""
import sys
from pathlib import Path

import torch

import option
import utility
from data import build_test_sets
from loss import build_loss
from model import make_model
from model.checkpoint import load_weights
from model.parallel import (close_process_group, convert_to_global_batchnorm, init_process_group,
                            process_group_from_env)
from trainer import Trainer, evaluate, inference_policy, phases_summary


def report(metrics, seconds: float) -> None:
    for name, m in metrics.items():
        print(f"{name}: PSNR {m['psnr']:.2f} dB / SSIM {m['ssim']:.4f}; bicubic upscaling of the "
              f"same LR: {m['bicubic_psnr']:.2f} dB / {m['bicubic_ssim']:.4f} ({seconds / 60:.1f} min)")


def main(argv=None) -> None:
    args = option.parse_args(argv)
    group = process_group_from_env()
    option.check_world_size(args, group.world_size)
    timer = utility.Timer()
    log = utility.setup_logging(quiet=not group.is_main)
    device = utility.select_device(args.cpu, group.local_rank if group.distributed else None)
    torch.manual_seed(args.seed)
    model = make_model(args)
    if args.sync_bn:
        convert_to_global_batchnorm(model)
    model.to(device)
    if args.pre_train:
        log.info(f"loaded {load_weights(model, args.pre_train)} weights from {args.pre_train}")
    test_sets = build_test_sets(args)
    if args.test_only:
        return report(evaluate(model, test_sets, device, with_bicubic=True, **inference_policy(args)),
                      timer.elapsed())
    run_dir = Path("experiment") / args.save
    trainer = Trainer(args, model, build_loss(args.loss, args.c_weight), test_sets, device, run_dir,
                      group)                                     # every check passed from here on
    init_process_group(group, device)
    if group.is_main:
        utility.prepare_run_dir("experiment", args.save, resume=bool(args.resume))
        utility.setup_logging(run_dir / "log.txt")
        utility.write_json(run_dir / "config.json", {"options": vars(args), "device": str(device),
                                                      "processes": group.world_size,
                                                      "phases": phases_summary(trainer.phases)})
        log.info(f"{args.model} x{args.scale} on {device}"
                 + (f" x {group.world_size} processes" if group.distributed else "")
                 + f", run folder {run_dir}")
    try:
        metrics = trainer.fit()
    finally:
        close_process_group()
    if group.is_main:
        report(metrics, timer.elapsed())


if __name__ == "__main__":
    sys.exit(utility.run_cli(main, "interrupted; the last finished epoch is saved (continue with "
                                   "--resume)"))
