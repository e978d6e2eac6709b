"""Train CDSR or DASR: ``python main.py`` runs a short CPU demo; see README.md for the recipes.

One process per device: ``torchrun --nproc_per_node N main.py ...`` (see README, 'Several GPUs').
"""
import importlib.util
import sys
from pathlib import Path

import torch

import option
import utility
from data import build_test_sets
from data.report import plot_set_comparison
from loss import build_loss
from model import make_model
from model.checkpoint import load_weights
from model.parallel import (close_process_group, convert_to_global_batchnorm, init_process_group,
                            process_group_from_env, restarted_by_torchrun)
from trainer import Trainer, evaluate, inference_policy, phases_summary


def report(metrics, seconds: float) -> None:
    for name, m in metrics.items():
        print(f"{name}: PSNR {m['psnr']:.2f} dB / SSIM {m['ssim']:.4f}; bicubic (MATLAB) upscaling of the "
              f"same LR: {m['bicubic_psnr']:.2f} dB / {m['bicubic_ssim']:.4f} ({seconds / 60:.1f} min)")


def start_run_folder(args, trainer: Trainer, device: torch.device, processes: int) -> None:
    """The run folder, once every check has passed: a fresh run moves an earlier one aside and
    writes config.json; a resumed run keeps config.json and appends to resumes.jsonl."""
    run_dir = utility.prepare_run_dir("experiment", args.save, resume=trainer.resumed)
    utility.setup_logging(run_dir / "log.txt")
    record = {"options": vars(args), "device": str(device), "processes": processes}
    if trainer.resumed:
        utility.append_json_line(run_dir / "resumes.jsonl", {
            **record, "command": sys.argv, "time": utility.now(),
            "from": {"epoch": trainer.start_epoch - 1, "iteration": trainer.start_iteration}})
    else:
        utility.write_json(run_dir / "config.json", {**record, "phases": phases_summary(trainer.phases)})


def show(model, test_sets, device, args, run_dir) -> None:
    """The final model's SR images of the validation sets in run_dir/results/ and a figure of
    bicubic | SR | HR crops per set in run_dir/figures/, named in the last line printed."""
    evaluate(model, test_sets, device, save_dir=run_dir / "results", **inference_policy(args))
    figures = [plot_set_comparison(run_dir / "figures" / f"compare_{s.name}.png", s, run_dir / "results")
               for s in test_sets]
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


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if option.wants_test_only(argv):
        return run_test_py(argv)
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
    run_dir = Path("experiment") / args.save
    trainer = Trainer(args, model, build_loss(args.loss, args.c_weight), test_sets, device, run_dir,
                      group)
    lock = utility.RunLock(run_dir)
    try:
        init_process_group(group, device)       # rank 0 reads the checkpoint for everyone
        if args.resume:
            trainer.resume(args.resume)
        elif args.auto_resume or restarted_by_torchrun():
            trainer.auto_resume()
        if group.is_main:                       # every check has passed; nothing written so far
            lock.acquire()
            start_run_folder(args, trainer, device, group.world_size)
        log.info(f"{model.name.upper()} x{model.scale} on {device} (preset {args.preset})"
                 + (f" x {group.world_size} processes" if group.distributed else "")
                 + f", run folder {run_dir}")
        with utility.StopSignals() as stop:
            metrics = trainer.fit(stop)
    finally:
        lock.release()
        close_process_group()
    if group.is_main:
        report(metrics, timer.elapsed())
        show(model, test_sets, device, args, run_dir)


if __name__ == "__main__":
    sys.exit(utility.run_cli(main, "interrupted; the last finished epoch is saved (continue with "
                                   "--resume)"))
