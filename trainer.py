"""Training phases, the training step, checkpoints and the one evaluation loop.

A run is a list of :class:`Phase` records (encoder pre-training, joint, frozen encoder), built
from the options and validated before anything starts. Each phase transition rebuilds the Adam
optimizer over exactly the parameters that phase trains and is logged once.
"""
import argparse
import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

import utility
from data import build_train_loader, build_train_set, build_training_degradation, epoch_seed
from data.eval_set import EvalSet
from data.images import to_image, write_png
from model.checkpoint import load_weights, read_checkpoint, save_checkpoint
from model.inference import bicubic_upscale, predict

ENCODER, JOINT, FREEZE = "encoder", "joint", "freeze"
RECORD_FIELDS = ("epoch", "phase", "dataset", "psnr", "ssim", "bicubic_psnr")  # psnr.csv


@dataclass(frozen=True)
class Phase:
    """Epochs ``first..last`` (1-based, inclusive) trained the same way.

    encoder: contrastive loss only, the query encoder is trained;
    joint: reconstruction + contrastive, generator and query encoder are trained;
    freeze: reconstruction only, the encoder is frozen (eval mode, no gradients, not optimised).
    The learning rate is ``base_lr * gamma ** ((epoch - origin) // step)``: the authors' step
    schedule, counted from the start of pre-training (``origin`` 0) or of SR training
    (``origin`` = number of pre-training epochs).
    """
    name: str
    first: int
    last: int
    base_lr: float
    step: int
    gamma: float
    origin: int

    @property
    def trains_encoder(self) -> bool:
        return self.name in (ENCODER, JOINT)

    @property
    def trains_generator(self) -> bool:
        return self.name in (JOINT, FREEZE)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** ((epoch - self.origin) // self.step)


def build_phases(args: argparse.Namespace) -> List[Phase]:
    """Phases from ``--epochs_encoder``, ``--epochs_sr``, ``--freeze_epoch`` and the lr flags.

    Raises ValueError when the ranges make no sense.
    """
    n_encoder = max(args.epochs_encoder, 0)
    total = n_encoder + args.epochs_sr
    if args.epochs_sr < 0:
        raise ValueError(f"--epochs_sr must be >= 0, got {args.epochs_sr}")
    if total == 0:
        raise ValueError("nothing to train: --epochs_encoder and --epochs_sr are both 0")
    if args.epochs_sr > 0 and args.freeze_epoch <= n_encoder:
        raise ValueError(f"--freeze_epoch {args.freeze_epoch} falls inside encoder pre-training "
                         f"(epochs 1..{n_encoder}); it must be > {n_encoder}")
    phases = []
    if n_encoder:
        phases.append(Phase(ENCODER, 1, n_encoder, args.lr_encoder, args.lr_decay_encoder,
                            args.gamma_encoder, 0))
    sr = dict(base_lr=args.lr_sr, step=args.lr_decay_sr, gamma=args.gamma_sr, origin=n_encoder)
    if args.freeze_epoch > n_encoder + 1:
        phases.append(Phase(JOINT, n_encoder + 1, min(args.freeze_epoch - 1, total), **sr))
    if args.freeze_epoch <= total:
        phases.append(Phase(FREEZE, max(args.freeze_epoch, n_encoder + 1), total, **sr))
    return [p for p in phases if p.first <= p.last]


def phase_of(phases: Sequence[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.first <= epoch <= p.last)


def set_trainable(model: nn.Module, phase: Phase) -> None:
    """requires_grad and train/eval modes for ``phase`` (the key encoder never has gradients)."""
    model.train()
    for p in model.generator.parameters():
        p.requires_grad_(phase.trains_generator)
    for p in model.encoder.query_encoder.parameters():
        p.requires_grad_(phase.trains_encoder)
    if not phase.trains_encoder:
        model.encoder.eval()


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (0.9, 0.999, eps 1e-8) over the parameters that currently require gradients."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                            betas=(0.9, 0.999), eps=1e-8)


def phase_forward(net: nn.Module, lr: torch.Tensor, phase: Phase) -> Dict[str, torch.Tensor]:
    """lr (B,2,3,h,w): query and key patches. Returns the outputs the phase's losses need."""
    if phase.name == ENCODER:
        return net(lr[:, 0], lr[:, 1], with_sr=False)
    if phase.name == JOINT:
        return net(lr[:, 0], lr[:, 1])
    return {"sr": net(lr[:, 0])}


def training_step(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, phase: Phase,
                  criterion: nn.Module, optimizer: torch.optim.Optimizer):
    """One optimisation step; lr (B,2,3,h,w), hr (B,3,s*h,s*w), both 0..255.

    Returns (outputs, losses) with the forward's outputs and the loss components.
    """
    optimizer.zero_grad(set_to_none=True)
    outputs = phase_forward(net, lr, phase)
    losses = criterion(outputs, hr)
    losses["total"].backward()
    optimizer.step()
    return outputs, losses


def inference_policy(args: argparse.Namespace) -> Dict[str, object]:
    """Keyword arguments of ``model.inference.predict`` from --self_ensemble, --chop, --tile,
    --tile_overlap, --embed_crop and --tile_pooling."""
    return {"ensemble": args.self_ensemble, "tile": args.tile if args.chop else None,
            "overlap": args.tile_overlap, "embed_crop": args.embed_crop or None,
            "global_stats": args.tile_pooling == "image"}


@torch.no_grad()
def evaluate(model: nn.Module, test_sets: Sequence[EvalSet], device: torch.device, *,
             with_bicubic: bool = False, save_dir: Optional[Path] = None,
             **policy) -> Dict[str, Dict[str, float]]:
    """PSNR/SSIM (Y, border = scale) of the model on each set: the only evaluation loop.

    ``test_sets``: ``data.eval_set.EvalSet``s (one dataset under one degradation setting) with
    unique names, whose items are ``{"name": str, "lr": float (3,h,w), "hr": float (3,s*h,s*w)}``
    in 0..255: training validation's fixed-degradation sets (named after their dataset), or
    test.py's, one per (dataset, protocol setting) named ``<dataset>/<setting>``. ``policy``:
    keyword arguments of ``model.inference.predict``
    (ensemble, tile, overlap, embed_crop, global_stats); none = the authors' eval forward.

    Returns ``{set name: {"psnr", "ssim"[, "bicubic_psnr", "bicubic_ssim"]}}`` (means over
    images). With ``save_dir``, SR images are written to ``save_dir/<set name>/<image>.png``.
    """
    names = [test_set.name for test_set in test_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation sets need distinct names, got {names}")
    was_training = model.training
    model.eval()
    results = {}
    for test_set in test_sets:
        scores: Dict[str, List[float]] = {}
        for item in tqdm(test_set, desc=f"eval {test_set.name}", leave=False, disable=None):
            lr, hr = item["lr"][None].to(device), item["hr"][None]
            sr = predict(model, lr, **policy).cpu()
            outputs = {"": sr, "bicubic_": bicubic_upscale(lr, model.scale).cpu()} if with_bicubic else {"": sr}
            for prefix, image in outputs.items():
                scores.setdefault(prefix + "psnr", []).append(
                    utility.psnr(image, hr, crop_border=model.scale))
                scores.setdefault(prefix + "ssim", []).append(
                    utility.ssim(image, hr, crop_border=model.scale))
            if save_dir is not None:
                write_png(Path(save_dir) / test_set.name / f"{item['name']}.png", to_image(sr))
        results[test_set.name] = {key: utility.mean_score(values) for key, values in scores.items()}
    model.train(was_training)
    return results


class Trainer:
    """Runs the phases epoch by epoch, validates after each epoch and keeps checkpoints.

    ``run_dir/checkpoint/last.pt`` is rewritten atomically after every epoch, so a killed run
    resumes (``--resume``) from its last finished epoch with the same data stream.
    """

    def __init__(self, args: argparse.Namespace, model: nn.Module, criterion: nn.Module,
                 test_sets: Sequence[EvalSet], device: torch.device, run_dir: Path) -> None:
        self.args = args
        self.model = model
        self.criterion = criterion.to(device)
        self.test_sets = test_sets
        self.device = device
        self.run_dir = Path(run_dir)
        self.log = utility.get_logger()
        self.phases = build_phases(args)
        self.degrade = build_training_degradation(args)
        self.train_set = build_train_set(args)
        self.net = self.parallel(model, args.n_GPUs, device)
        self.phase: Optional[Phase] = None
        self.optimizer = None
        self.scheduler = None
        self.start_epoch = 1
        self.best_psnr = -math.inf

    def parallel(self, model: nn.Module, n_gpus: int, device: torch.device) -> nn.Module:
        """DataParallel over the first ``n_gpus`` CUDA devices, or ``model`` itself."""
        if device.type != "cuda":
            if n_gpus > 1:
                self.log.warning(f"--n_GPUs {n_gpus} ignored: training on the {device.type}")
            return model
        if n_gpus > torch.cuda.device_count():
            raise ValueError(f"--n_GPUs {n_gpus} but only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible; lower --n_GPUs or check CUDA_VISIBLE_DEVICES")
        return nn.DataParallel(model, list(range(n_gpus))) if n_gpus > 1 else model

    # ------------------------------------------------------------------ phases
    def enter_phase(self, phase: Phase) -> None:
        """Set what ``phase`` trains and build its optimizer and per-epoch lr schedule."""
        set_trainable(self.model, phase)
        self.optimizer = make_optimizer(self.model, phase.lr_at(phase.first))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: phase.lr_at(phase.first + i) / phase.lr_at(phase.first))
        self.phase = phase
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.log.info(f"phase '{phase.name}': epochs {phase.first}-{phase.last}, "
                      f"lr {phase.lr_at(phase.first):g}, {n_params:,} trainable parameters")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, name: str) -> Path:
        return self.run_dir / "checkpoint" / name

    def weights_fields(self, epoch: int) -> Dict[str, object]:
        """What every checkpoint of this run holds: enough for test.py to rebuild the model."""
        return dict(model_name=self.model.name, scale=self.model.scale,
                    model_kwargs=self.model.hparams, model=self.model.state_dict(), epoch=epoch,
                    phase=self.phase.name, config=vars(self.args))

    def save(self, epoch: int) -> None:
        fields = dict(self.weights_fields(epoch), optimizer=self.optimizer.state_dict(),
                      scheduler=self.scheduler.state_dict())
        save_checkpoint(self.checkpoint_path("last.pt"), **fields)
        if self.args.save_models:
            save_checkpoint(self.checkpoint_path(f"epoch_{epoch}.pt"), **fields)

    def resume(self, which: int) -> None:
        name = "last.pt" if which == -1 else f"epoch_{which}.pt"
        path = self.checkpoint_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (run without --resume, "
                                    "or with --save_models to keep per-epoch checkpoints)")
        state = read_checkpoint(path)
        load_weights(self.model, state)
        epoch = state["epoch"]
        phase = phase_of(self.phases, epoch)
        if phase.name != state["phase"]:
            raise ValueError(f"{path} ended epoch {epoch} in phase '{state['phase']}' but the "
                             f"current options put epoch {epoch} in '{phase.name}'; use the same "
                             "--epochs_encoder/--epochs_sr/--freeze_epoch as the original run")
        if epoch < self.phases[-1].last and phase_of(self.phases, epoch + 1) is phase:
            self.enter_phase(phase)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = epoch + 1
        self.forget_records_after(epoch)
        self.best_psnr = self.best_recorded_psnr()
        self.log.info(f"resumed {path} after epoch {epoch}")

    # ------------------------------------------------------------------ loop
    def fit(self) -> Dict[str, Dict[str, float]]:
        """Train every remaining epoch; returns the last evaluation."""
        if self.args.resume:
            self.resume(self.args.resume)
        last = self.phases[-1].last
        if self.start_epoch > last:
            self.log.info(f"all {last} epochs are done; evaluating the final weights")
            return evaluate(self.model, self.test_sets, self.device, with_bicubic=True,
                            **inference_policy(self.args))
        metrics: Dict[str, Dict[str, float]] = {}
        for epoch in range(self.start_epoch, last + 1):
            phase = phase_of(self.phases, epoch)
            if self.phase is not phase:
                self.enter_phase(phase)
            self.train_epoch(epoch)
            metrics = self.validate(epoch)
            self.scheduler.step()
            self.save(epoch)
        return metrics

    def train_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.args.seed, epoch)
        degradation_rng = torch.Generator().manual_seed(seed)
        set_trainable(self.model, self.phase)
        lr_now = self.optimizer.param_groups[0]["lr"]
        timer, sums = utility.Timer(), {}
        loader = build_train_loader(self.args, self.train_set, seed)
        bar = tqdm(loader, desc=f"epoch {epoch} ({self.phase.name})", leave=False, disable=None)
        for it, batch in enumerate(bar, 1):
            hr = batch["hr"].to(self.device, non_blocking=True).float()
            lr = self.degrade(hr, degradation_rng)
            _, losses = training_step(self.net, lr, hr[:, 0], self.phase, self.criterion, self.optimizer)
            losses = {key: float(value.detach()) for key, value in losses.items()}
            if not math.isfinite(losses["total"]):
                raise FloatingPointError(f"loss became {losses['total']} at epoch {epoch}, "
                                         f"iteration {it}; lower the learning rate")
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            if it % self.args.print_every == 0 or it == len(loader):
                means = ", ".join(f"{k} {v / it:.4f}" for k, v in sums.items())
                self.log.info(f"epoch {epoch} [{it}/{len(loader)}] {self.phase.name}: {means} | "
                              f"lr {lr_now:g} | {timer.elapsed() / it:.2f} s/it")

    def validate(self, epoch: int) -> Dict[str, Dict[str, float]]:
        metrics = evaluate(self.model, self.test_sets, self.device, with_bicubic=True,
                           **inference_policy(self.args))
        first = metrics[self.test_sets[0].name]["psnr"]
        if first > self.best_psnr:
            self.best_psnr = first
            save_checkpoint(self.checkpoint_path("best.pt"), **self.weights_fields(epoch))
        for name, m in metrics.items():
            self.log.info(f"epoch {epoch} {name} x{self.model.scale}: PSNR {m['psnr']:.2f} dB, "
                          f"SSIM {m['ssim']:.4f} (bicubic {m['bicubic_psnr']:.2f} dB, "
                          f"{m['bicubic_ssim']:.4f}); best {self.best_psnr:.2f} dB")
        self.record(epoch, metrics)
        return metrics

    @property
    def records_path(self) -> Path:
        return self.run_dir / "psnr.csv"

    def read_records(self) -> List[Dict[str, str]]:
        """Rows of psnr.csv (epoch, phase, dataset, psnr, ssim, bicubic_psnr); [] when none."""
        if not self.records_path.exists():
            return []
        with open(self.records_path, newline="") as f:
            return list(csv.DictReader(f))

    def forget_records_after(self, epoch: int) -> None:
        """Drop psnr.csv rows of epochs after ``epoch``: a run killed between validating and
        checkpointing an epoch trains that epoch again on resume and must record it once."""
        rows = self.read_records()
        kept = [row for row in rows if int(row["epoch"]) <= epoch]
        if len(kept) < len(rows):
            self.write_records(kept, mode="w")

    def write_records(self, rows: Sequence[Dict[str, object]], mode: str = "a") -> None:
        new = mode == "w" or not self.records_path.exists()
        with open(self.records_path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def best_recorded_psnr(self) -> float:
        """Best PSNR on the first test set in this run's psnr.csv (-inf when none)."""
        first = self.test_sets[0].name
        return max((float(r["psnr"]) for r in self.read_records() if r["dataset"] == first),
                   default=-math.inf)

    def record(self, epoch: int, metrics: Dict[str, Dict[str, float]]) -> None:
        """Append to psnr.csv and redraw the PSNR-per-epoch plot."""
        self.write_records([{"epoch": epoch, "phase": self.phase.name, "dataset": name,
                             "psnr": f"{m['psnr']:.4f}", "ssim": f"{m['ssim']:.5f}",
                             "bicubic_psnr": f"{m['bicubic_psnr']:.4f}"}
                            for name, m in metrics.items()])
        rows = self.read_records()
        curves: Dict[str, List[float]] = {}
        for row in rows:
            curves.setdefault(row["dataset"], []).append(float(row["psnr"]))
        epochs = sorted({int(row["epoch"]) for row in rows})
        utility.plot_curves(self.run_dir / "psnr.png", epochs, curves, xlabel="epoch",
                            ylabel="PSNR (dB)", title=f"{self.model.name.upper()} x{self.model.scale}")


def phases_summary(phases: Sequence[Phase]) -> List[Dict[str, object]]:
    return [dataclasses.asdict(p) for p in phases]
