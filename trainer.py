"""Training phases, the training step, checkpoints and the one evaluation loop.

A run is a list of :class:`Phase` records (encoder pre-training, joint, frozen encoder), built
from the options and validated before anything starts. Each phase transition rebuilds the Adam
optimizer over exactly the parameters that phase trains (and the DDP wrapper, which registers
gradients at construction) and is logged once.
"""
import argparse
import dataclasses
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

import utility
from data import build_train_loader, build_train_set, epoch_seed
from data.eval_set import EvalSet
from data.images import to_image, write_png
from model.checkpoint import load_weights, read_checkpoint, save_checkpoint
from model.inference import bicubic_upscale, predict
from model.parallel import (ProcessGroup, any_process, barrier, check_in_sync,
                            data_parallel_devices, gather_rows, sum_over_processes, unwrap,
                            world_size, wrap)
from model.precision import Precision

ENCODER, JOINT, FREEZE = "encoder", "joint", "freeze"


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


def phases_summary(phases: Sequence[Phase]) -> List[Dict[str, object]]:
    return [dataclasses.asdict(p) for p in phases]


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


# ----------------------------------------------------------------------------- the step
def phase_forward(net: nn.Module, lr: torch.Tensor, phase: Phase) -> Dict[str, torch.Tensor]:
    """lr (B,2,3,h,w): query and key patches. Returns the outputs the phase's losses need."""
    if phase.name == ENCODER:
        return net(lr[:, 0], lr[:, 1], with_sr=False)
    if phase.name == JOINT:
        return net(lr[:, 0], lr[:, 1])
    return {"sr": net(lr[:, 0])}


@dataclass
class StepResult:
    """What one training step did: the forward's ``outputs``, this process's loss components
    ``losses`` (tensors, ``total`` included), their means over all processes ``reported``
    (floats: the global batch's losses) and whether the update was ``applied``."""
    outputs: Dict[str, torch.Tensor]
    losses: Dict[str, torch.Tensor]
    reported: Dict[str, float]
    applied: bool


def gradients_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """0-dim bool tensor: every gradient the optimizer holds is finite."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.isfinite(torch.nn.utils.get_total_norm(grads))


def training_step(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, phase: Phase,
                  criterion: nn.Module, optimizer: torch.optim.Optimizer, *,
                  precision: Optional[Precision] = None) -> StepResult:
    """One optimisation step; lr (B,2,3,h,w), hr (B,3,s*h,s*w), both 0..255 (B: this process's
    share of the global batch).

    MoCo's state is updated here, on the real module, once per step, in the authors' order:
    the key encoder's momentum update before the forward (with the pre-step query weights), the
    enqueue of the keys of the whole global batch (every process's, in rank order) after the
    backward; the forward, which DataParallel and DDP replicate, changes none of it.

    A step whose loss or gradients are not finite on any process is not applied (no optimizer
    step, no enqueue); with fp16 the gradient scaler alone deals with overflowing gradients.
    """
    precision = precision or Precision()
    moco = unwrap(net).encoder if phase.trains_encoder else None
    optimizer.zero_grad(set_to_none=True)
    if moco is not None:
        moco.momentum_update()
    with precision.autocast(lr.device):
        outputs = phase_forward(net, lr, phase)
    losses = criterion(outputs, hr)
    precision.backward(losses["total"])
    finite = torch.isfinite(losses["total"].detach())
    if not precision.scales_gradients:
        finite = finite & gradients_finite(optimizer).to(finite.device)
    # One collective per step: every process's losses and whether it saw a non-finite value.
    local = torch.stack([*(v.detach().float() for v in losses.values()), (~finite).float()])
    totals = sum_over_processes(local).tolist()
    reported = {k: v / world_size() for k, v in zip(losses, totals)}
    applied = totals[-1] == 0
    if applied:
        precision.step(optimizer)
        if moco is not None:
            moco.enqueue(gather_rows(outputs["keys"]))
    else:
        optimizer.zero_grad(set_to_none=True)
    return StepResult(outputs, losses, reported, applied)


# ----------------------------------------------------------------------------- evaluation
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


# ----------------------------------------------------------------------------- the run
PSNR_FIELDS = ("epoch", "phase", "dataset", "psnr", "ssim", "bicubic_psnr")
LOSS_FIELDS = ("epoch", "iteration", "phase", "lr", "applied", "total", "contrastive")


class Trainer:
    """Runs the phases epoch by epoch, validates after each epoch and keeps checkpoints.

    Under torchrun every process trains its share of each global batch; rank 0 alone
    validates and writes the run folder while the others wait. The run folder gets
    ``psnr.csv``/``psnr.png`` (validation per epoch), ``losses.csv`` (the global batch's losses
    of every iteration) and ``checkpoint/last.pt``, rewritten atomically after every epoch (and
    mid-epoch when a scheduler's signal stops the run), so a killed run resumes (``--resume``)
    with the same data stream.
    """

    def __init__(self, args: argparse.Namespace, model: nn.Module, criterion: nn.Module,
                 test_sets: Sequence[EvalSet], device: torch.device, run_dir: Path,
                 group: ProcessGroup = ProcessGroup()) -> None:
        self.args = args
        self.model = model
        self.criterion = criterion.to(device)
        self.test_sets = test_sets
        self.device = device
        self.run_dir = Path(run_dir)
        self.group = group
        self.log = utility.get_logger()
        self.phases = build_phases(args)
        self.precision = Precision(args.precision, device)
        self.data_parallel = self.parallel_devices(args.n_GPUs, device)
        self.train_set = build_train_set(args)
        self.net: Optional[nn.Module] = None         # the model as the step calls it (DDP, ...)
        self.phase: Optional[Phase] = None
        self.optimizer = None
        self.scheduler = None
        self.start_epoch, self.start_iteration = 1, 0
        self.progress: Dict[str, object] = {}           # of a mid-epoch checkpoint
        self.stop: Optional[utility.StopSignals] = None
        self.best_psnr = -math.inf
        self.bad_steps = 0                      # consecutive steps with non-finite values
        self.psnr_table = utility.CsvTable(self.run_dir / "psnr.csv", PSNR_FIELDS)
        self.loss_table = utility.CsvTable(self.run_dir / "losses.csv",
                                           LOSS_FIELDS + tuple(getattr(criterion, "names", ())))

    def parallel_devices(self, n_gpus: int, device: torch.device) -> Sequence[int]:
        """CUDA devices for DataParallel (none under torchrun: one process per device)."""
        if device.type != "cuda" and n_gpus > 1:
            self.log.warning(f"--n_GPUs {n_gpus} ignored: training on the {device.type}")
        if self.group.distributed and n_gpus > 1:
            self.log.warning(f"--n_GPUs {n_gpus} ignored under torchrun: one process per device")
            return []
        return data_parallel_devices(n_gpus, device)

    # ------------------------------------------------------------------ phases
    def enter_phase(self, phase: Phase) -> None:
        """Set what ``phase`` trains; build its optimizer and per-epoch lr schedule. (Its
        DDP/DataParallel wrapper is built when training starts: DDP needs the process group.)"""
        set_trainable(self.model, phase)
        self.optimizer = make_optimizer(self.model, phase.lr_at(phase.first))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: phase.lr_at(phase.first + i) / phase.lr_at(phase.first))
        self.phase = phase
        self.net = None
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

    def save(self, epoch: int, progress: Optional[Dict[str, object]] = None) -> None:
        """last.pt after ``epoch`` finished epochs, or, with ``progress`` (its ``iteration``
        and what the loop needs to go on), in the middle of epoch ``epoch + 1``. Every process
        calls it (it checks they still hold the same model); rank 0 writes. Non-finite weights
        are never written."""
        moco = self.model.encoder
        check_in_sync([*self.model.parameters(), moco.queue, moco.queue_ptr],
                      "the model's parameters or MoCo queue")
        if not all(torch.isfinite(t).all() for t in self.model.state_dict().values()
                   if t.is_floating_point()):
            raise FloatingPointError(f"the weights are no longer finite after epoch {epoch}; "
                                     f"nothing saved, {self.checkpoint_path('last.pt')} is the "
                                     "last good state: lower the learning rate and --resume")
        if not self.group.is_main:
            return
        fields = dict(self.weights_fields(epoch), optimizer=self.optimizer.state_dict(),
                      scheduler=self.scheduler.state_dict(), progress=progress)
        save_checkpoint(self.checkpoint_path("last.pt"), **fields)
        if self.args.save_models and progress is None:
            save_checkpoint(self.checkpoint_path(f"epoch_{epoch}.pt"), **fields)

    def resume(self, which: int) -> None:
        """Continue from ``last.pt`` (``which`` -1) or ``epoch_<which>.pt``: weights, MoCo
        queue, optimizer, schedule and, for a checkpoint written mid-epoch, the iteration."""
        name = "last.pt" if which == -1 else f"epoch_{which}.pt"
        path = self.checkpoint_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (run without --resume, "
                                    "or with --save_models to keep per-epoch checkpoints)")
        state = read_checkpoint(path)
        load_weights(self.model, state)
        epoch, progress = state["epoch"], state.get("progress") or {}
        iteration = progress.get("iteration", 0)
        at = epoch + 1 if iteration else epoch           # the epoch the saved phase belongs to
        phase = phase_of(self.phases, at) if at <= self.phases[-1].last else None
        if phase is None or phase.name != state["phase"]:
            raise ValueError(f"{path} was saved in epoch {at}, phase '{state['phase']}', but the "
                             f"current options put epoch {at} in "
                             f"'{phase.name if phase else 'no phase'}'; use the same "
                             "--epochs_encoder/--epochs_sr/--freeze_epoch as the original run")
        if iteration or (epoch < self.phases[-1].last and phase_of(self.phases, epoch + 1) is phase):
            self.enter_phase(phase)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.start_iteration, self.progress = epoch + 1, iteration, progress
        if iteration:
            self.precision.load_state_dict(progress.get("scaler") or {})
            self.bad_steps = progress.get("bad_steps", 0)
            utility.set_rng_states(progress["rng"])
        self.best_psnr = max((float(r["psnr"]) for r in self.psnr_table.read()
                              if r["dataset"] == self.test_sets[0].name), default=-math.inf)
        where = f"iteration {iteration} of epoch {epoch + 1}" if iteration else f"epoch {epoch}"
        self.log.info(f"resumed {path} after {where}")

    # ------------------------------------------------------------------ loop
    def fit(self, stop: Optional[utility.StopSignals] = None) -> Dict[str, Dict[str, float]]:
        """Train every remaining epoch (call ``resume`` first to continue a run); returns the
        last evaluation (rank 0; {} elsewhere). A signal caught by ``stop`` ends the run at the
        end of the current iteration with a checkpoint (``utility.Preempted``)."""
        self.stop = stop
        if self.group.is_main:          # a run killed after writing these redoes that work
            self.psnr_table.forget_after(self.start_epoch - 1)
            self.loss_table.forget_after(self.start_epoch - 1, self.start_iteration)
        last = self.phases[-1].last
        if self.start_epoch > last:
            self.log.info(f"all {last} epochs are done; evaluating the final weights")
            return self.evaluate()
        metrics: Dict[str, Dict[str, float]] = {}
        for epoch in range(self.start_epoch, last + 1):
            phase = phase_of(self.phases, epoch)
            if self.phase is not phase:
                self.enter_phase(phase)
            if self.net is None:
                self.net = wrap(self.model, self.group, self.device, self.data_parallel)
            start = self.start_iteration if epoch == self.start_epoch else 0
            self.train_epoch(epoch, start, self.progress if start else {})
            metrics = self.validate(epoch)
            self.scheduler.step()
            self.save(epoch)
            barrier()
            if epoch < last and self.stop_requested():
                raise self.preempted(f"after epoch {epoch}")
        return metrics

    def stop_requested(self) -> bool:
        return any_process(bool(self.stop and self.stop.requested), self.device)

    def preempted(self, where: str) -> utility.Preempted:
        number = (self.stop and self.stop.requested) or signal.SIGTERM
        return utility.Preempted(
            f"stopped by {signal.Signals(number).name} {where}; {self.checkpoint_path('last.pt')} "
            "holds everything to continue: run the same command with --resume", number)

    def train_epoch(self, epoch: int, start: int = 0, progress: Optional[dict] = None) -> None:
        """Iterations ``start + 1 ..`` of ``epoch``; ``progress``: the running sums of a
        mid-epoch checkpoint."""
        # evaluate() leaves everything in train mode; this puts a frozen encoder back in eval
        # mode (and is where requires_grad is set after a resume), so it runs every epoch.
        set_trainable(self.model, self.phase)
        loader = build_train_loader(self.args, self.train_set, epoch_seed(self.args.seed, epoch),
                                    rank=self.group.rank, world_size=self.group.world_size,
                                    start=start)
        total = start + len(loader)
        lr_now = self.optimizer.param_groups[0]["lr"]
        meter = utility.StepMeter()
        sums: Dict[str, float] = dict((progress or {}).get("sums", {}))
        skipped = (progress or {}).get("skipped", 0)
        bar = tqdm(loader, desc=f"epoch {epoch} ({self.phase.name})", leave=False, initial=start,
                   total=total, disable=None if self.group.is_main else True)
        for it, batch in enumerate(meter.timed(bar), start + 1):
            hr = batch["hr"].to(self.device, non_blocking=True).float()        # (b,2,3,P,P)
            lr = self.train_set.degradation.apply(hr, batch["params"], batch.get("noise"))
            step = training_step(self.net, lr, hr[:, 0], self.phase, self.criterion,
                                 self.optimizer, precision=self.precision)
            self.record_step(epoch, it, lr_now, step)
            skipped += not step.applied
            for key, value in step.reported.items():
                sums[key] = sums.get(key, 0.0) + value
            if it % self.args.print_every == 0 or it == total:
                text = ", ".join(f"{k} {v / it:.4f}" for k, v in sums.items())
                self.log.info(f"epoch {epoch} [{it}/{total}] {self.phase.name}: {text} | "
                              f"lr {lr_now:g} | {meter.seconds_per_step():.2f} s/it, "
                              f"{100 * meter.wait_share():.0f}% waiting for data"
                              + (f" | {skipped} steps skipped" if skipped else ""))
            if it < total and self.stop_requested():
                self.save(epoch - 1, progress={
                    "iteration": it, "sums": sums, "skipped": skipped, "bad_steps": self.bad_steps,
                    "scaler": self.precision.state_dict(), "rng": utility.rng_states()})
                raise self.preempted(f"in epoch {epoch} after iteration {it}")

    def record_step(self, epoch: int, iteration: int, lr: float, step: StepResult) -> None:
        """losses.csv, and the non-finite guard: a skipped step is logged and counted; after
        ``--max_bad_steps`` consecutive ones the run stops (the last checkpoint is intact)."""
        if self.group.is_main:
            self.loss_table.write([{"epoch": epoch, "iteration": iteration, "phase": self.phase.name,
                                    "lr": lr, "applied": int(step.applied), **step.reported}])
        if step.applied:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        self.log.warning(f"epoch {epoch} iteration {iteration}: the loss or the gradients are not "
                         f"finite ({self.bad_steps} in a row); step skipped")
        if self.bad_steps >= self.args.max_bad_steps:
            raise FloatingPointError(
                f"{self.bad_steps} steps in a row had a non-finite loss or gradients (epoch "
                f"{epoch}, iteration {iteration}); training stopped, the last checkpoint in "
                f"{self.run_dir / 'checkpoint'} is intact: lower the learning rate and --resume")

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Scores on the test sets (rank 0; the other processes wait and get {})."""
        metrics = {}
        if self.group.is_main:
            metrics = evaluate(self.model, self.test_sets, self.device, with_bicubic=True,
                               **inference_policy(self.args))
        barrier()
        return metrics

    def validate(self, epoch: int) -> Dict[str, Dict[str, float]]:
        """Evaluate after ``epoch``: log, psnr.csv, psnr.png, best.pt (rank 0). A non-finite
        score stops the run before anything of this epoch is written."""
        metrics = self.evaluate()
        bad = [name for name, m in metrics.items() if not math.isfinite(m["psnr"]) and m["psnr"] != math.inf]
        if any_process(bool(bad), self.device):
            raise FloatingPointError(f"validation after epoch {epoch} gave a non-finite PSNR on "
                                     f"{', '.join(bad) or 'rank 0'}: training diverged; nothing of "
                                     f"this epoch was saved, {self.checkpoint_path('last.pt')} is "
                                     "the last good state: lower the learning rate and --resume")
        if not self.group.is_main:
            return metrics
        first = metrics[self.test_sets[0].name]["psnr"]
        if first > self.best_psnr:
            self.best_psnr = first
            save_checkpoint(self.checkpoint_path("best.pt"), **self.weights_fields(epoch))
        for name, m in metrics.items():
            self.log.info(f"epoch {epoch} {name} x{self.model.scale}: PSNR {m['psnr']:.2f} dB, "
                          f"SSIM {m['ssim']:.4f} (bicubic {m['bicubic_psnr']:.2f} dB, "
                          f"{m['bicubic_ssim']:.4f}); best {self.best_psnr:.2f} dB")
        self.psnr_table.write([{"epoch": epoch, "phase": self.phase.name, "dataset": name,
                                "psnr": f"{m['psnr']:.4f}", "ssim": f"{m['ssim']:.5f}",
                                "bicubic_psnr": f"{m['bicubic_psnr']:.4f}"}
                               for name, m in metrics.items()])
        self.plot_psnr()
        return metrics

    def plot_psnr(self) -> None:
        """psnr.png: PSNR per epoch, one curve per test set."""
        curves: Dict[str, List[float]] = {}
        rows = self.psnr_table.read()
        for row in rows:
            curves.setdefault(row["dataset"], []).append(float(row["psnr"]))
        utility.plot_curves(self.run_dir / "psnr.png", sorted({int(r["epoch"]) for r in rows}), curves,
                            xlabel="epoch", ylabel="PSNR (dB)",
                            title=f"{self.model.name.upper()} x{self.model.scale}")
