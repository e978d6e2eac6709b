"""How a blind-SR model is trained: the phases (data, validated before anything starts), what
each trains, and one optimisation step.

CDSR and DASR (contrastive encoders): encoder pre-training trains the query encoder on the
contrastive loss; the joint phase trains generator and query encoder on reconstruction +
contrastive losses; the frozen phase trains the generator alone. The step keeps MoCo's state
(key encoder, queue) outside the forward that DataParallel and DDP replicate, so it is the same
on one device and on many.

KDSR (knowledge distillation, ``model/kdsr_pair.py``): the teacher phase trains the teacher
(its encoder reads the HR) on L1; the student's phases train it against the frozen teacher's
degradation features: distillation-encoder epochs on the distillation loss alone (the authors'
``--epochs_encoder`` of their anisotropic recipe), then distillation on L1 + that loss.
"""
import argparse
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .kdsr import kdsr_role_and_size
from .kdsr_pair import KDSRDistillation
from .parallel import gather_rows, sum_over_processes, unwrap, world_size
from .precision import Precision

ENCODER, JOINT, FREEZE = "encoder", "joint", "freeze"
TEACHER, KD_ENCODER, DISTILL = "teacher", "kd_encoder", "distill"
KDSR_PHASES = (TEACHER, KD_ENCODER, DISTILL)


@dataclass(frozen=True)
class Phase:
    """Epochs ``first..last`` (1-based, inclusive) trained the same way.

    encoder: contrastive loss only, the query encoder is trained;
    joint: reconstruction + contrastive, generator and query encoder are trained;
    freeze: reconstruction only, the encoder is frozen (eval mode, no gradients, not optimised);
    teacher: KDSR's teacher on reconstruction (its encoder reads the HR);
    kd_encoder: KDSR's student encoder (without its final projection, which only the generator
    reads) on the distillation loss alone, the teacher frozen;
    distill: the whole KDSR student on reconstruction + distillation, the teacher frozen.

    The learning rate is ``base_lr * gamma ** ((epoch - origin) // step)``: the authors' step
    schedule, counted from the start of pre-training (``origin`` 0) or of SR training
    (``origin`` = number of pre-training epochs); a KDSR student's phases count from the end of
    the teacher stage. ``stage_origin``: the epoch before the authors' program of this phase
    began (their stage 4 for a student's phases: the teacher's epochs), for their checkpoint
    numbering (``authors_epoch``). ``init_student``: the phase starts the student (its
    generator := the teacher's) when it begins, not when a run resumes inside it.
    """
    name: str
    first: int
    last: int
    base_lr: float
    step: int
    gamma: float
    origin: int
    stage_origin: int = 0
    init_student: bool = False

    @property
    def trains_encoder(self) -> bool:
        """A contrastive phase that trains the (MoCo) query encoder."""
        return self.name in (ENCODER, JOINT)

    @property
    def trains_generator(self) -> bool:
        return self.name in (JOINT, FREEZE)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** ((epoch - self.origin) // self.step)

    def authors_epoch(self, epoch: int) -> int:
        """``epoch`` of the run as the authors' program of this phase numbers it."""
        return epoch - self.stage_origin

    @property
    def authors_save_period(self) -> int:
        """Their trainers also keep the weights of every N-th epoch: 20 (KDSR's teacher),
        30 (its student; CDSR and DASR have no such rule)."""
        return 20 if self.name == TEACHER else 30


def build_phases(args: argparse.Namespace) -> List[Phase]:
    """Phases from ``--epochs_encoder``, ``--epochs_sr``, ``--freeze_epoch`` and the lr flags
    (validated by ``option.parse_args``: at least one epoch, no freeze inside pre-training);
    for KDSR ``kdsr_phases``."""
    from . import canonical_name            # here: the registry is the package itself
    kdsr = kdsr_role_and_size(canonical_name(args.model))
    if kdsr is not None:
        return kdsr_phases(args, student=kdsr[0] == "s")
    n_encoder = max(args.epochs_encoder, 0)
    total = n_encoder + args.epochs_sr
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


def kdsr_phases(args: argparse.Namespace, *, student: bool) -> List[Phase]:
    """KDSR's phases: ``--epochs_teacher`` teacher epochs (lr ``--lr_teacher``, x``--gamma_teacher``
    every ``--lr_decay_teacher``: the authors' stage 3; none for a student given a trained
    teacher by ``--pre_train_TA``), then for a student their stage 4: ``--epochs_encoder``
    distillation-encoder epochs at ``--lr_encoder`` (their anisotropic recipe), then
    ``--epochs_sr`` distillation epochs at ``--lr_sr``. The student starts from the teacher's
    generator unless ``--pre_train_ST`` gave its weights. ``--pre_train`` (a distillation run's
    file) gives both: no teacher stage, the student as loaded."""
    n_teacher = 0 if student and (args.pre_train_TA or args.pre_train) else args.epochs_teacher
    phases = [Phase(TEACHER, 1, n_teacher, args.lr_teacher, args.lr_decay_teacher,
                    args.gamma_teacher, 0)]
    if student:
        n_encoder = max(args.epochs_encoder, 0)
        start = not (args.pre_train_ST or args.pre_train)
        phases.append(Phase(KD_ENCODER, n_teacher + 1, n_teacher + n_encoder, args.lr_encoder,
                            args.lr_decay_encoder, args.gamma_encoder, n_teacher, n_teacher,
                            init_student=start))
        phases.append(Phase(DISTILL, n_teacher + n_encoder + 1, n_teacher + n_encoder + args.epochs_sr,
                            args.lr_sr, args.lr_decay_sr, args.gamma_sr, n_teacher + n_encoder,
                            n_teacher, init_student=start and not n_encoder))
    return [p for p in phases if p.first <= p.last]


def phase_of(phases: Sequence[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.first <= epoch <= p.last)


def phases_summary(phases: Sequence[Phase]) -> List[Dict[str, object]]:
    return [dataclasses.asdict(p) for p in phases]


def set_trainable(model: nn.Module, phase: Phase) -> None:
    """requires_grad and train/eval modes for ``phase`` (the key encoder never has gradients;
    a frozen encoder or KDSR teacher is in eval mode)."""
    model.train()
    if phase.name in KDSR_PHASES:
        return _set_kdsr_trainable(model, phase)
    for p in model.generator.parameters():
        p.requires_grad_(phase.trains_generator)
    for p in model.encoder.query_encoder.parameters():
        p.requires_grad_(phase.trains_encoder)
    if not phase.trains_encoder:
        model.encoder.eval()


def _set_kdsr_trainable(model: nn.Module, phase: Phase) -> None:
    """``model``: a KDSR teacher alone (teacher phase) or a ``KDSRDistillation``."""
    pair = isinstance(model, KDSRDistillation)
    teacher = model.teacher if pair else model
    for p in model.parameters():
        p.requires_grad_(False)
    if phase.name == TEACHER:
        for p in teacher.parameters():
            p.requires_grad_(True)
        return
    if not pair:
        raise ValueError(f"phase '{phase.name}' trains a KDSR student: it needs the teacher and "
                         "student pair (KDSRDistillation)")
    teacher.eval()
    trained = model.student.encoder if phase.name == KD_ENCODER else model.student
    for p in trained.parameters():
        p.requires_grad_(True)
    if phase.name == KD_ENCODER:      # only the generator reads the projection: no gradient
        for p in model.student.encoder.degradation_proj.parameters():
            p.requires_grad_(False)


def begin_phase(model: nn.Module, phase: Phase) -> Optional[str]:
    """What ``phase`` does once, when a run enters it (not when it resumes inside it): start a
    KDSR student from the teacher's generator. Returns a sentence for the log, or None."""
    if not phase.init_student:
        return None
    model.init_student_from_teacher()
    return (f"{model.student.name.upper()}'s generator starts from the teacher's; its encoder "
            "from its own initialisation (the authors' strict=False load of the teacher file)")


def evaluated_model(model: nn.Module, phase: Optional[Phase]) -> nn.Module:
    """The network validation scores in ``phase``: a KDSR pair's teacher in the teacher phase
    (fed each image's HR), its student otherwise (and before any phase); ``model`` itself for
    every other model."""
    if not isinstance(model, KDSRDistillation):
        return model
    return model.teacher if phase is not None and phase.name == TEACHER else model.student


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (0.9, 0.999, eps 1e-8) over the parameters that currently require gradients."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                            betas=(0.9, 0.999), eps=1e-8)


def phase_forward(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor,
                  phase: Phase) -> Dict[str, torch.Tensor]:
    """lr (B,2,3,h,w): query and key patches (KDSR reads the first alone, as the authors train
    on one patch per image); hr (B,3,s*h,s*w): the first patch's HR, which KDSR's teacher reads.
    Returns the outputs the phase's losses need."""
    if phase.name == ENCODER:
        return net(lr[:, 0], lr[:, 1], with_sr=False)
    if phase.name == JOINT:
        return net(lr[:, 0], lr[:, 1])
    if phase.name == TEACHER:
        return {"sr": net(lr[:, 0], hr)}
    if phase.name in (KD_ENCODER, DISTILL):
        return net(lr[:, 0], hr, distill=True, with_sr=phase.name == DISTILL)
    return {"sr": net(lr[:, 0])}


@dataclass
class StepResult:
    """What one training step did: the forward's ``outputs``, this process's loss components
    ``losses`` (tensors, ``total`` included), their means over all processes ``reported``
    (floats: the global batch's losses), whether the update was ``applied`` and whether every
    loss and gradient was ``finite``. fp16's scaler skips a step whose scaled gradients
    overflowed and halves its scale: such a step is not applied, yet finite, while the scale
    is above 1; at a scale of 1 or less the gradients overflow without any scaling, and the
    step counts as not finite. ``accuracy``: the global batch's top-1 accuracy of the
    contrastive task (the positive key scored highest), None for a forward without one."""
    outputs: Dict[str, torch.Tensor]
    losses: Dict[str, torch.Tensor]
    reported: Dict[str, float]
    applied: bool
    finite: bool = True
    accuracy: Optional[float] = None


def contrastive_accuracy(outputs: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """0-dim float: the share of samples whose ``logits`` (B,1+K) are highest at their
    ``labels`` (B,) (MoCo's positive, column 0); None when the outputs have no logits."""
    if "logits" not in outputs:
        return None
    with torch.no_grad():
        return (outputs["logits"].argmax(dim=1) == outputs["labels"]).float().mean()


def gradients_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """0-dim bool tensor: every gradient the optimizer holds is finite."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.isfinite(torch.nn.utils.get_total_norm(grads))


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def running_statistics(module: nn.Module) -> List[torch.Tensor]:
    """The running-statistics buffers (mean, variance, batch count) of every BatchNorm in
    ``module``: what a forward in train mode changes besides the outputs."""
    return [buffer for m in module.modules() if isinstance(m, _BATCHNORMS)
            for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buffer is not None]


def training_step(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, phase: Phase,
                  criterion: nn.Module, optimizer: torch.optim.Optimizer, *,
                  precision: Optional[Precision] = None) -> StepResult:
    """One optimisation step; lr (B,2,3,h,w), hr (B,3,s*h,s*w), both 0..255 (B: this process's
    share of the global batch).

    MoCo's state is updated here, on the real module, once per step, in the authors' order:
    the key encoder's momentum update before the forward (with the pre-step query weights), the
    enqueue of the keys of the whole global batch (every process's, in rank order) after the
    backward; the forward, which DataParallel and DDP replicate, changes none of it. KDSR has
    no such state: its step's only collectives are DDP's gradient averaging and the loss sum
    below (the frozen teacher runs inside the forward, on each process's share).

    A step whose loss or gradients are not finite on any process is not applied (no optimizer
    step, no enqueue); with fp16 the gradient scaler deals with overflowing gradients
    (StepResult). A step not applied also leaves the BatchNorm running statistics as they
    were before it: a non-finite forward would poison them for validation, the frozen phase
    and every later checkpoint.
    """
    precision = precision or Precision()
    moco = unwrap(net).encoder if phase.trains_encoder else None
    statistics = running_statistics(unwrap(net))
    before = [buffer.clone() for buffer in statistics]       # 5,652 numbers for CDSR
    optimizer.zero_grad(set_to_none=True)
    if moco is not None:
        moco.momentum_update()
    with precision.autocast(lr.device):
        outputs = phase_forward(net, lr, hr, phase)
    losses = criterion(outputs, hr)
    precision.backward(losses["total"])
    finite = torch.isfinite(losses["total"].detach())
    if not precision.scales_gradients:
        finite = finite & gradients_finite(optimizer).to(finite.device)
    # One collective per step: every process's losses, contrastive accuracy (when the forward
    # has one) and whether it saw a non-finite value.
    accuracy = contrastive_accuracy(outputs)
    extra = [] if accuracy is None else [accuracy.to(finite.device)]
    local = torch.stack([*(v.detach().float() for v in losses.values()), *extra, (~finite).float()])
    totals = sum_over_processes(local).tolist()
    reported = {k: v / world_size() for k, v in zip(losses, totals)}
    finite = totals[-1] == 0
    scale = precision.gradient_scale
    applied = finite and precision.step(optimizer)       # fp16: the scaler may skip the step
    if finite and not applied and scale <= 1:            # overflow without any scaling
        finite = False
    if applied and moco is not None:
        moco.enqueue(gather_rows(outputs["keys"]))
    if not applied:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(statistics, before):
                buffer.copy_(saved)
    return StepResult(outputs, losses, reported, applied, finite,
                      None if accuracy is None else totals[len(losses)] / world_size())
