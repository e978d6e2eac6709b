"""Train CDSR or DASR: ``python main.py`` runs a short CPU demo; see README.md for the recipes."""
import sys

import torch

import option
import utility
from data import build_test_sets
from data.report import plot_set_comparison
from loss import build_loss
from model import make_model
from model.checkpoint import load_weights
from trainer import Trainer, evaluate, inference_policy, phases_summary


def report(metrics, seconds: float) -> None:
    for name, m in metrics.items():
        print(f"{name}: PSNR {m['psnr']:.2f} dB / SSIM {m['ssim']:.4f}; bicubic upscaling of the "
              f"same LR: {m['bicubic_psnr']:.2f} dB / {m['bicubic_ssim']:.4f} ({seconds / 60:.1f} min)")


def show(model, test_sets, device, args, run_dir) -> None:
    """The final model's SR images of the validation sets in run_dir/results/ and a figure of
    bicubic | SR | HR crops per set in run_dir/figures/, named in the last line printed."""
    evaluate(model, test_sets, device, save_dir=run_dir / "results", **inference_policy(args))
    figures = [plot_set_comparison(run_dir / "figures" / f"compare_{s.name}.png", s, run_dir / "results")
               for s in test_sets]
    print(f"bicubic | SR | HR crops: {', '.join(str(path) for path in figures)}")


def main(argv=None) -> None:
    args = option.parse_args(argv)
    timer = utility.Timer()
    run_dir = utility.prepare_run_dir("experiment", args.save, resume=bool(args.resume))
    log = utility.setup_logging(run_dir / "log.txt")
    device = utility.select_device(args.cpu)
    torch.manual_seed(args.seed)
    model = make_model(args).to(device)
    if args.pre_train:
        log.info(f"loaded {load_weights(model, args.pre_train)} weights from {args.pre_train}")
    test_sets = build_test_sets(args)
    trainer = Trainer(args, model, build_loss(args.loss, args.c_weight), test_sets, device, run_dir)
    utility.write_json(run_dir / "config.json", {"options": vars(args), "device": str(device),
                                                  "phases": phases_summary(trainer.phases)})
    log.info(f"{args.model} x{args.scale} on {device} (preset {args.preset}), run folder {run_dir}")
    report(trainer.fit(), timer.elapsed())
    show(model, test_sets, device, args, run_dir)


if __name__ == "__main__":
    sys.exit(utility.run_cli(main, "interrupted; the last finished epoch is saved (continue with "
                                   "--resume)"))
