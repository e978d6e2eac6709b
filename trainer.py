"""The training run.

A run is a list of phases (``model.training.Phase``: encoder pre-training, joint, frozen encoder;
for KDSR teacher, distillation encoder, distillation), built from the options and validated
before anything starts; ``Trainer`` runs them epoch by epoch. Each phase transition rebuilds
the Adam optimizer over exactly the parameters that phase trains (and the DDP wrapper, which
registers gradients at construction) and is logged once.
The phase vocabulary and the training step live in ``model/training.py``, validation's
evaluation loop in ``model/evaluation.py``, the run's checkpoint files in
``model/run_checkpoints.py``, its CSV records and curves in ``data/run_records.py``, its
TensorBoard events in ``data/tensorboard_log.py``, the moving average of the weights
(--ema_decay) in ``model/ema.py`` and the CSC codebook's health in ``model/codebook_health.py``.
"""
import argparse
import math
import signal
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager, Dict, Iterator, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

import utility
from data import build_train_loader, epoch_seed
from data.eval_set import EvalSet
from data.patch_pairs import PatchPairs
from data.run_records import RunRecords
from data.tensorboard_log import TensorBoardLog, summary_writer_class
from model.checkpoint import averaged_weights, load_weights, rng_states, set_rng_states
from model.codebook_health import CodebookMonitor, CollapseWatch, query_codebook
from model.ema import WeightEMA, averaging_note
from model.evaluation import evaluate, inference_policy
from model.parallel import (ProcessGroup, any_process, barrier, close_process_group,
                            data_parallel_devices, init_process_group, max_over_processes,
                            restarted_by_torchrun, wrap)
from model.precision import Precision
from model.previews import validation_crops
from model.run_checkpoints import ResumePoint, RunCheckpoints
from model.training import (Phase, StepResult, begin_phase, build_phases, evaluated_model,
                            make_optimizer, phase_of, phases_summary, set_trainable, training_step)


# ----------------------------------------------------------------------------- the run
class Trainer:
    """Runs the phases epoch by epoch, validates after each epoch and keeps checkpoints.

    Under torchrun every process trains its share of each global batch; rank 0 alone
    validates and writes the run folder while the others wait. The run folder gets
    ``psnr.csv``/``psnr.png`` (validation per epoch), ``losses.csv``/``losses.png`` (the
    global batch's losses of every iteration), ``tensorboard/`` (--use_tb_logger) and
    ``checkpoint/last.pt``, rewritten atomically after every epoch (and mid-epoch when a
    scheduler's signal stops the run), so a killed run resumes (``--resume``, or
    ``--auto_resume`` when the command is simply run again) with the same data stream.
    With --ema_decay the moving average of the weights (``ema``) is what is validated, kept
    in best.pt and returned as the final scores (``scored_model``).
    """

    def __init__(self, args: argparse.Namespace, model: nn.Module, criterion: nn.Module,
                 train_set: PatchPairs, test_sets: Sequence[EvalSet], device: torch.device,
                 group: ProcessGroup = ProcessGroup(), run_dir: Optional[Path] = None) -> None:
        self.args = args
        self.model = model
        self.criterion = criterion.to(device)
        self.train_set = train_set
        self.test_sets = test_sets
        self.device = device
        self.run_dir = Path("experiment") / args.save if run_dir is None else Path(run_dir)
        self.group = group
        self.checkpoints = RunCheckpoints(self.run_dir, vars(args), keep_epochs=args.save_models,
                                          is_main=group.is_main, keep_after=args.st_save_epoch)
        self.log = utility.get_logger()
        self.phases = build_phases(args)
        # best.pt follows the phases that score the run's final network (not a KDSR teacher's)
        self.best_phases = {p.name for p in self.phases
                            if evaluated_model(model, p) is self.final_model}
        self.precision = Precision(args.precision, device)
        self.data_parallel = self.parallel_devices(args.n_GPUs, device)
        self.net: Optional[nn.Module] = None         # the model as the step calls it (DDP, ...)
        self.phase: Optional[Phase] = None
        self.optimizer = None
        self.scheduler = None
        self.start_epoch, self.start_iteration = 1, 0
        self.progress: Dict[str, object] = {}           # of a mid-epoch checkpoint
        self.resumed = False
        self.stop: Optional[utility.StopSignals] = None
        self.stop_signal = 0                    # the signal that stopped any process
        self.best_psnr = -math.inf
        self.bad_steps = 0                      # consecutive steps with non-finite values
        self.records = RunRecords(self.run_dir, getattr(criterion, "names", ()))
        self.board = TensorBoardLog(self.run_dir / "tensorboard", enabled=False)  # opened by fit
        if args.use_tb_logger and group.is_main:
            summary_writer_class()              # a missing package stops the run before it starts
        self.ema = WeightEMA(model, args.ema_decay) if args.ema_decay else None
        codebook = query_codebook(model)
        self.codebook = CodebookMonitor(codebook) if codebook is not None else None
        self.collapse = CollapseWatch()
        self.clock = utility.Timer()

    @property
    def final_model(self) -> nn.Module:
        """The network the run delivers and its final scores are of (a KDSR pair's student)."""
        return evaluated_model(self.model, self.phases[-1])

    def scored_model(self, phase: Optional[Phase] = None) -> nn.Module:
        """What validation in ``phase`` (default: the last), best.pt and the final scores use:
        the network the phase evaluates (``evaluated_model``: a KDSR pair's teacher in its phase,
        else its student), of the moving average of the weights with --ema_decay."""
        source = self.ema.module if self.ema is not None else self.model
        return evaluated_model(source, phase or self.phases[-1])

    def global_step(self, epoch: int, iteration: int) -> int:
        """Iteration ``iteration`` of ``epoch`` counted over the whole run (TensorBoard's step)."""
        return (epoch - 1) * self.args.test_every + iteration

    def parallel_devices(self, n_gpus: int, device: torch.device) -> Sequence[int]:
        """CUDA devices for DataParallel (none under torchrun: one process per device)."""
        if device.type != "cuda" and n_gpus > 1:
            self.log.warning(f"--n_GPUs {n_gpus} ignored: training on the {device.type}")
        if self.group.distributed and n_gpus > 1:
            self.log.warning(f"--n_GPUs {n_gpus} ignored under torchrun: one process per device")
            return []
        return data_parallel_devices(n_gpus, device)

    def open_run_folder(self) -> None:
        """The run folder, once every check has passed (rank 0): a fresh run moves an earlier one
        aside and writes config.json; a resumed run keeps config.json and appends its command to
        resumes.jsonl. From here on the log also goes to log.txt."""
        run_dir = utility.prepare_run_dir(self.run_dir.parent, self.run_dir.name, resume=self.resumed)
        utility.setup_logging(run_dir / "log.txt")
        record = {"options": vars(self.args), "device": str(self.device),
                  "processes": self.group.world_size}
        if self.resumed:
            utility.append_json_line(run_dir / "resumes.jsonl", {
                **record, "command": sys.argv, "time": utility.now(),
                "from": {"epoch": self.start_epoch - 1, "iteration": self.start_iteration}})
        else:
            utility.write_json(run_dir / "config.json", {**record, "phases": phases_summary(self.phases)})

    # ------------------------------------------------------------------ phases
    def enter_phase(self, phase: Phase, fresh: bool = True) -> None:
        """Set what ``phase`` trains; build its optimizer and per-epoch lr schedule. (Its
        DDP/DataParallel wrapper is built when training starts: DDP needs the process group.)
        ``fresh``: the run starts the phase (not a resume inside it), which then does what it
        does once (``begin_phase``: a KDSR student starts from the teacher's generator)."""
        started = begin_phase(self.model, phase) if fresh else None
        if started:
            self.log.info(started)
            if self.ema is not None:    # the weights jumped: the average starts again from them
                self.ema.reset(self.model)
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
    def save(self, epoch: int, progress: Optional[Dict[str, object]] = None) -> None:
        """last.pt after ``epoch`` finished epochs, or mid-epoch with ``progress``; both hold
        the gradient scaler and the count of non-finite steps in a row
        (``RunCheckpoints.save``; every process calls it, rank 0 writes)."""
        loop = {"scaler": self.precision.state_dict(), "bad_steps": self.bad_steps}
        self.board.flush()                  # the curves hold at least what the checkpoint holds
        self.checkpoints.save(self.model, self.phase, self.optimizer, self.scheduler, epoch,
                              {**loop, **(progress or {})}, self.ema)

    def resume(self, which: int) -> None:
        """Continue from ``last.pt`` (``which`` -1) or ``epoch_<which>.pt``: weights, MoCo
        queue, optimizer, schedule, gradient scaler, the count of non-finite steps and, for a
        checkpoint written mid-epoch, the iteration and every random state."""
        self.continue_from(self.checkpoints.resume(which, self.model, self.phases))

    def auto_resume(self) -> None:
        """--auto_resume: continue from ``last.pt`` when it exists and was written with the
        same options, else start afresh; the log says which and why."""
        point, reason = self.checkpoints.resume_if_same(self.model, self.phases)
        if point is None:
            self.log.info(f"--auto_resume: starting afresh, {reason}")
            return
        self.continue_from(point)

    def continue_from(self, point: ResumePoint) -> None:
        """Take over the state of the checkpoint ``point`` (already loaded into the model)."""
        if point.same_phase:
            self.enter_phase(point.phase, fresh=False)
            self.optimizer.load_state_dict(point.state["optimizer"])
            self.scheduler.load_state_dict(point.state["scheduler"])
        self.start_epoch, self.start_iteration = point.epoch + 1, point.iteration
        self.progress = point.progress
        self.precision.load_state_dict(point.progress.get("scaler") or {})
        self.bad_steps = point.progress.get("bad_steps", 0)
        if point.iteration:
            set_rng_states(point.progress["rng"])
        self.continue_ema(point)
        self.resumed = True
        self.log.info(f"resumed {point.path} after {point.position}")

    def continue_ema(self, point: ResumePoint) -> None:
        """The moving average saved in ``point`` (--ema_decay); a checkpoint without one starts
        it from the resumed weights."""
        saved = point.state.get("model_ema")
        if self.ema is None:
            if saved is not None:
                self.log.info(f"{point.path} also holds a moving average of the weights; without "
                              "--ema_decay it is not continued")
        elif saved is None:
            self.ema.reset(self.model)
            self.log.info(f"{point.path} holds no moving average of the weights: --ema_decay "
                          f"{self.ema.decay:g} starts one from its weights")
        else:
            load_weights(self.ema.module, averaged_weights(point.state),
                         label=f"{point.path} (model_ema)")

    # ------------------------------------------------------------------ loop
    def fit(self, stop: Optional[utility.StopSignals] = None) -> Dict[str, Dict[str, float]]:
        """Train every remaining epoch (call ``resume`` first to continue a run); returns the
        last evaluation (rank 0; {} elsewhere). A signal caught by ``stop`` ends the run at the
        end of the current iteration with a checkpoint (``utility.Preempted``)."""
        self.stop = stop
        if self.group.is_main:          # a run killed after writing these redoes that work
            self.records.forget_after(self.start_epoch - 1, self.start_iteration)
            self.best_psnr = self.records.best_psnr(self.test_sets[0].name, self.best_phases)
            redone = self.global_step(self.start_epoch, self.start_iteration + 1)  # hides later events
            self.board = TensorBoardLog(self.run_dir / "tensorboard", enabled=self.args.use_tb_logger,
                                        purge_step=redone if self.resumed else None)
        last = self.phases[-1].last
        note = averaging_note(self.ema.decay, last * self.args.test_every) if self.ema else None
        if note:
            self.log.warning(note)
        if self.start_epoch > last:
            self.log.info(f"all {last} epochs are done; evaluating the final weights")
            return self.validation_scores()
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
        self.board.close()
        return metrics

    def stop_requested(self) -> bool:
        """Whether any process caught a stop signal; every process learns its number."""
        self.stop_signal = max_over_processes(self.stop.requested if self.stop else 0, self.device)
        return bool(self.stop_signal)

    def preempted(self, where: str) -> utility.Preempted:
        number = self.stop_signal or signal.SIGTERM
        return utility.Preempted(
            f"stopped by {signal.Signals(number).name} {where}; {self.checkpoints.path('last.pt')} "
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
        with self.recording_codebook():
            for it, batch in enumerate(meter.timed(bar), start + 1):
                hr = batch["hr"].to(self.device, non_blocking=True).float()        # (b,2,3,P,P)
                lr = self.train_set.degradation.apply(hr, batch["params"], batch.get("noise"))
                step = training_step(self.net, lr, hr[:, 0], self.phase, self.criterion,
                                     self.optimizer, precision=self.precision)
                if step.applied and self.ema is not None:
                    self.ema.update(self.model)
                self.record_step(epoch, it, lr_now, step)
                skipped += not step.applied
                for key, value in step.reported.items():
                    sums[key] = sums.get(key, 0.0) + value
                if it % self.args.print_every == 0 or it == total:
                    text = ", ".join(f"{k} {loss_text(v / it)}" for k, v in sums.items())
                    self.log.info(f"epoch {epoch} [{it}/{total}] {self.phase.name}: {text} | "
                                  f"lr {lr_now:g} | {meter.seconds_per_step():.2f} s/it, "
                                  f"{100 * meter.wait_share():.0f}% waiting for data"
                                  + (f" | {skipped} steps skipped" if skipped else ""))
                if it < total and self.stop_requested():
                    self.save(epoch - 1, progress={"iteration": it, "sums": sums, "skipped": skipped,
                                                   "rng": rng_states()})
                    barrier()                       # no process exits before last.pt is written
                    raise self.preempted(f"in epoch {epoch} after iteration {it}")
        self.epoch_report(epoch, meter)

    def recording_codebook(self) -> ContextManager[None]:
        """While training: gather the CSC codebook's attention (a model without one: nothing)."""
        return self.codebook.recording() if self.codebook is not None else nullcontext()

    def epoch_report(self, epoch: int, meter: utility.StepMeter) -> None:
        """After the iterations of ``epoch``: step time and loader wait, and the CSC codebook's
        usage (log.txt; a collapse that lasts ``CollapseWatch.epochs`` epochs is warned about
        once), also in TensorBoard. Every process calls it (the usage sums over processes)."""
        step = self.global_step(epoch, self.args.test_every)
        self.board.scalars(step, {"time/step_seconds": meter.seconds_per_step(),
                                  "time/loader_wait_share": meter.wait_share()})
        usage = self.codebook.epoch_usage(self.device) if self.codebook is not None else None
        if usage is None:
            return
        self.log.info(f"epoch {epoch}: CSC codebook: {100 * usage['mass_share']:.0f}% of the "
                      f"attention on {usage['rows_for_mass']} of {usage['rows']} rows, perplexity "
                      f"{usage['perplexity']:.1f}, {usage['sample_entropy']:.2f} nats per sample "
                      f"({usage['samples']} samples)")
        self.board.scalars(step, {"codebook/perplexity": usage["perplexity"],
                                  "codebook/rows_for_90pct": usage["rows_for_mass"]})
        warning = self.collapse.observe(usage)
        if warning:
            self.log.warning(warning)

    def record_step(self, epoch: int, iteration: int, lr: float, step: StepResult) -> None:
        """losses.csv and TensorBoard, and the non-finite guard: a step skipped for a non-finite
        loss or gradient is logged and counted; after ``--max_bad_steps`` consecutive ones the
        run stops (the last checkpoint is intact). Under fp16 the scaler's skips count once its
        scale is down to 1 (``StepResult``): gradients that are never finite stop the run too."""
        if self.group.is_main:
            self.records.write_step(epoch, iteration, self.phase.name, lr, step.applied,
                                    step.reported, step.accuracy)
            self.board.training_step(self.global_step(epoch, iteration), step.reported, lr,
                                     step.accuracy)
        if step.finite:             # applied, or an fp16 step the gradient scaler skipped
            self.bad_steps = 0
            return
        self.bad_steps += 1
        self.log.warning(f"epoch {epoch} iteration {iteration}: the loss or the gradients are not "
                         f"finite ({self.bad_steps} in a row); step skipped")
        if self.bad_steps >= self.args.max_bad_steps:
            raise FloatingPointError(
                f"{self.bad_steps} steps in a row had a non-finite loss or gradients (epoch "
                f"{epoch}, iteration {iteration}); training stopped, the last checkpoint in "
                f"{self.checkpoints.folder} is intact: lower the learning rate and --resume")

    def validation_scores(self) -> Dict[str, Dict[str, float]]:
        """Scores on the validation sets (rank 0; the other processes wait and get {})."""
        metrics = {}
        if self.group.is_main:
            metrics = evaluate(self.scored_model(self.phase), self.test_sets, self.device,
                               with_bicubic=True, **inference_policy(self.args))
        barrier()
        return metrics

    def validate(self, epoch: int) -> Dict[str, Dict[str, float]]:
        """Evaluate after ``epoch`` (``scored_model``): log, psnr.csv, psnr.png, losses.png,
        TensorBoard, best.pt (rank 0). A non-finite score stops the run before anything of this
        epoch is written."""
        metrics = self.validation_scores()
        bad = [name for name, m in metrics.items() if not math.isfinite(m["psnr"]) and m["psnr"] != math.inf]
        if any_process(bool(bad), self.device):
            raise FloatingPointError(f"validation after epoch {epoch} gave a non-finite PSNR on "
                                     f"{', '.join(bad) or 'rank 0'}: training diverged; nothing of "
                                     f"this epoch was saved, {self.checkpoints.path('last.pt')} is "
                                     "the last good state: lower the learning rate and --resume")
        if not self.group.is_main:
            return metrics
        first = metrics[self.test_sets[0].name]["psnr"]
        if self.phase.name in self.best_phases and first > self.best_psnr:
            self.best_psnr = first
            self.checkpoints.save_best(self.model, self.phase, epoch, self.ema)
        scored = self.scored_model(self.phase)
        whose = f" {scored.name.upper()} fed the HR" if scored.needs_hr else ""
        for name, m in metrics.items():
            self.log.info(f"epoch {epoch}{whose} {name} x{self.model.scale}: PSNR {m['psnr']:.2f} dB, "
                          f"SSIM {m['ssim']:.4f} (bicubic (MATLAB) {m['bicubic_psnr']:.2f} dB, "
                          f"{m['bicubic_ssim']:.4f})" + (f"; best {self.best_psnr:.2f} dB"
                                                         if self.phase.name in self.best_phases else ""))
        self.records.write_validation(epoch, self.phase.name, metrics,
                                      f"{self.model.name.upper()} x{self.model.scale}")
        self.records.plot_losses(f"{self.model.name.upper()} x{self.model.scale}")
        self.board_validation(epoch, metrics)
        return metrics

    def board_validation(self, epoch: int, metrics: Dict[str, Dict[str, float]]) -> None:
        """TensorBoard: the scores, and every --tb_image_every epochs and after the last, LR | SR
        | HR crops of the first validation images (rank 0)."""
        if not self.board.enabled:
            return
        step = self.global_step(epoch, self.args.test_every)
        self.board.validation(step, metrics)
        every = self.args.tb_image_every
        if every and (epoch % every == 0 or epoch == self.phases[-1].last):
            test_set = self.test_sets[0]
            self.board.crops(step, test_set.name, validation_crops(
                self.scored_model(self.phase), test_set, self.device, **inference_policy(self.args)))


def loss_text(value: float) -> str:
    """A loss for the log: 4 decimals, or 3 significant digits below 0.001 (KDSR's distillation
    term falls to ~1e-5, which 4 decimals would print as 0.0000)."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"


@contextmanager
def training_session(trainer: Trainer) -> Iterator[utility.StopSignals]:
    """What a run holds while ``trainer.fit`` runs, released on the way out: torchrun's process
    group (joined first: rank 0 reads a checkpoint to resume for every process), the resume
    (--resume, --auto_resume or a torchrun restart), the run folder's lock and records (rank 0),
    and the stop signals of cluster schedulers (SIGTERM/SIGUSR1: checkpoint, then stop).
    Nothing is written before every check has passed."""
    args, group, model = trainer.args, trainer.group, trainer.model
    lock = utility.RunLock(trainer.run_dir)
    try:
        init_process_group(group, trainer.device)
        if args.resume:
            trainer.resume(args.resume)
        elif args.auto_resume or restarted_by_torchrun():
            trainer.auto_resume()
        if group.is_main:
            lock.acquire()
            trainer.open_run_folder()
        trainer.log.info(f"{model.name.upper()} x{model.scale} on {trainer.device} (preset {args.preset})"
                         + (f" x {group.world_size} processes" if group.distributed else "")
                         + f", run folder {trainer.run_dir}")
        with utility.StopSignals() as stop:
            yield stop
    finally:
        trainer.board.close()
        lock.release()
        close_process_group()
