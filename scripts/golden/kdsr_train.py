"""One step of each of the authors' KDSR stages through OUR trainer (golden ``kdsr_index.json``
``train``, made by ``scripts/golden/kdsr.py``; see tests/golden_kdsr/README.md).

For each recorded step (their ``Trainer.train()`` on the golden batch), the pair a student's run
trains (``KDSRDistillation`` of the golden teacher and student) goes through what ``Trainer``
does: ``begin_phase`` (a student's phase starts it from the teacher's generator: the student's
own generator is scrambled first, so the copy is checked too), ``set_trainable``,
``make_optimizer`` and ``training_step`` with the criterion ``loss.make_loss`` builds for a
KDSR pair (L1 on [0,1] images, distillation weight 1, temperature 0.15). Their stage 3 is our
``teacher`` phase, their stage 4 our ``distill`` phase, its epochs <= ``--epochs_encoder`` our
``kd_encoder`` phase. Compared, under the README's rules:

* losses (L1, distillation, total): ``|d| <= 1e-5 |ref|``;
* the student's and the teacher's distillation features: ``max|d| <= 1e-4`` absolute;
* gradients of the recorded weights (first 256 elements): ``max|d| <= 0.05 max|ref|``, and
  none where theirs had none;
* post-step weights: every element ``|d| <= 2 lr + 1e-6|ref|``, all but 0.5% ``<= 0.05 lr +
  1e-6|ref|`` (``train_compare.parameter_moves``); weights without a gradient unchanged;
* the frozen teacher bit-identical after a student's step.
"""
import copy
from pathlib import Path

import numpy as np
import torch

from loss import build_loss
from model.authors_format import map_authors_key
from model.kdsr_pair import KDSRDistillation
from model.training import (DISTILL, KD_ENCODER, TEACHER, Phase, begin_phase, make_optimizer,
                            set_trainable, training_step)

from .common import GoldenResult, compare_abs, compare_rel_max, failure
from .kdsr_models import TEMPERATURE, golden_model, read_index
from .train_compare import TOLERANCES, parameter_moves

PHASES = {"stage3_iso": TEACHER, "stage4_iso": DISTILL, "stage4_anisonoise_encoder": KD_ENCODER}
LOSSES = {"loss_l1": "L1", "loss_kd": "kd", "loss_total": "total"}
LOSS_RTOL = 1e-5
FEATURE_ATOL = 1e-4
GRAD_RTOL = 0.05
KEPT = 256                      # leading elements of each recorded weight


def step_pair(golden_dir: Path) -> KDSRDistillation:
    """The golden teacher and student (M, x4) as a fresh pair in train mode."""
    return KDSRDistillation(copy.deepcopy(golden_model(golden_dir, "kdsr-t-m", 4)),
                            copy.deepcopy(golden_model(golden_dir, "kdsr-s-m", 4))).train()


def run_step(golden_dir: Path, name: str):
    """(pair after the step, the StepResult, the phase, the teacher's state before) of the
    recorded step ``name`` through our trainer."""
    step = read_index(golden_dir)["train"][name]
    batch = np.load(Path(golden_dir) / "kdsr_train_batch.npz")
    hr = torch.from_numpy(batch["hr"].astype(np.float32))
    lr = torch.from_numpy(np.load(Path(golden_dir) / step["file"])["lr"].astype(np.float32))
    pair = step_pair(golden_dir)
    phase = Phase(PHASES[name], 1, 1, step["learning_rate"], 1, 1.0, 0,
                  init_student=PHASES[name] != TEACHER)
    if phase.init_student:
        with torch.no_grad():
            for p in pair.student.generator.parameters():
                p.mul_(-3.0).add_(1.0)                  # begin_phase must restore the teacher's
    begin_phase(pair, phase)
    set_trainable(pair, phase)
    optimizer = make_optimizer(pair, phase.base_lr)
    criterion = build_loss("1*L1", 1.0, rgb_range=pair.rgb_range, kd_weight=1.0,
                           temperature=TEMPERATURE)
    teacher_before = {k: v.clone() for k, v in pair.teacher.state_dict().items()}
    result = training_step(pair, lr[:, None], hr, phase, criterion, optimizer)
    return pair, result, phase, teacher_before


def check_step(golden_dir: Path, name: str) -> list[GoldenResult]:
    """Every recorded quantity of step ``name`` (see the module docstring)."""
    step = read_index(golden_dir)["train"][name]
    ref = np.load(Path(golden_dir) / step["file"])
    pair, result, phase, teacher_before = run_step(golden_dir, name)
    label = f"step_{name}"
    results = [compare_rel_max(f"{label}/{array}", result.losses[ours].detach(), ref[array], LOSS_RTOL)
               for array, ours in LOSSES.items() if array in ref.files]
    missing = sorted(set(result.losses) - {LOSSES[a] for a in LOSSES if a in ref.files})
    if missing or not result.applied:
        results.append(failure(f"{label}/losses", f"ours computed {missing}, applied {result.applied}"))
    if phase.name != TEACHER:
        results += [compare_abs(f"{label}/student_kd_features", result.outputs["kd_features"],
                                ref["student_kd_features"], FEATURE_ATOL),
                    compare_abs(f"{label}/teacher_kd_features", result.outputs["teacher_kd_features"],
                                ref["teacher_kd_features"], FEATURE_ATOL)]
    trained_name, trained = (("kdsr-t-m", pair.teacher) if phase.name == TEACHER
                             else ("kdsr-s-m", pair.student))
    parameters, state = dict(trained.named_parameters()), trained.state_dict()
    for key in step["recorded_keys"]:
        if "sub_mean" in key:
            continue                                    # a constant buffer of ours
        ours = map_authors_key(key, trained_name)
        grad = parameters[ours].grad
        moved = state[ours].reshape(-1)[:KEPT].numpy()
        if key in step["no_grad_keys"]:
            results.append(GoldenResult(f"{label}/grad__{key} (none, as theirs)",
                                        0.0 if grad is None else float("inf"), 0.0, grad is None))
            results.append(compare_abs(f"{label}/post__{key} (unchanged)", moved,
                                       ref[f"init__{key}"], 0.0))
            continue
        if grad is None:
            results.append(failure(f"{label}/grad__{key}", "ours has no gradient, theirs has"))
            continue
        results.append(compare_rel_max(f"{label}/grad__{key}", grad.reshape(-1)[:KEPT],
                                       ref[f"grad__{key}"], GRAD_RTOL))
        results += parameter_moves(f"{label}/post__{key}", moved, ref[f"post__{key}"],
                                   phase.base_lr, TOLERANCES["it1"]["param"])
    if phase.name != TEACHER:
        changed = sum(int((v != teacher_before[k]).sum()) for k, v in pair.teacher.state_dict().items())
        results.append(GoldenResult(f"{label}/teacher (elements changed)", float(changed), 0.0,
                                    changed == 0))
    return results


def check_kdsr_training_steps(golden_dir: Path) -> list[GoldenResult]:
    """Every recorded step of the index, through our trainer."""
    results = []
    for name in read_index(golden_dir)["train"]:
        try:
            results += check_step(golden_dir, name)
        except (KeyError, ValueError, RuntimeError, OSError) as error:
            results.append(failure(f"step_{name}", f"{type(error).__name__}: {error}"))
    return results
