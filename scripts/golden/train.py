"""Our training step against the authors' (golden ``train/``, see its README).

Everything is derived from ``train/train_index.json``: the files, their model, scale, phase and
iteration, the batch file and each phase's learning rate. For each (model, scale):

1. the initial state of the recipe: ``build_model`` + the folder's ``fill.py`` weights through
   ``load_weights``; key-encoder parameters copied from the query encoder, key-encoder BatchNorm
   buffers at their defaults, the queue = ``key_uniform('E.queue')`` normalised per column in
   float32, ``queue_ptr`` 0. Checked against ``*_train_init.npz`` (exact; queue 1e-7).
2. each phase from that state with a fresh optimizer, through OUR trainer:
   ``set_trainable``, ``make_optimizer``, ``training_step`` with ``build_loss('1*L1', 1.0)``;
   golden phase 'joint' is our ``JOINT``, 'pretrain' our ``ENCODER``.
3. after every iteration that has a file, every recorded array against the README's tolerances.

Where the authors' code is inconsistent the checker feeds what the golden data states: CDSR's
authors' encoder-only phase gives the encoder 0..255 pixels while ours (like their joint phase)
gives it [0,1], so that phase gets ``lr * 255`` (``ENCODER_PIXEL_SCALE``; exact for integer
pixels). Our encoder phase optimises only the query encoder; theirs also holds G, which gets no
gradient there, so Adam updates the same tensors (checked: ``optimizer_tensors``).

Units: ``rel to max|ref|``; ``abs``; ``lr`` = |d| beyond 1e-6|ref|, in units of the phase's
learning rate; ``x (a + r|ref|)`` = the worst element's |d| over its allowance.
"""
import copy
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import model
import trainer
from loss import build_loss
from model.checkpoint import authors_constants, map_authors_key

from .common import (GoldenResult, as_array, compare_abs, compare_rel_max, failure,
                     fill_module, load_golden_weights, shape_mismatch)

INDEX = "train_index.json"
PHASES = {"joint": trainer.JOINT, "pretrain": trainer.ENCODER}
ENCODER_PIXEL_SCALE = {"cdsr": 255.0}  # the authors' CDSR encoder-only phase reads 0..255 pixels
C_WEIGHT = 1.0
INIT_QUEUE_ATOL = 1e-7

# train/README.md's tolerance table, per stage ("it1": iteration 1 and pretrain; "it2": later).
TOLERANCES = {
    "it1": {"loss_sr": 1e-5, "loss_c": 1e-4, "loss_total": (1e-4, 1e-5), "logits": 5e-5, "sr": 5e-5,
            "vector": 1e-4, "grad": 5e-2, "param": {"bulk": 0.05, "all": 2.0, "outlier_fraction": 0.005},
            "key_param": 5e-7, "bn": (1e-6, 1e-5), "queue": 2e-5},
    "it2": {"loss_sr": 3e-4, "loss_c": 2e-3, "loss_total": (2e-3, 3e-4), "logits": 2e-3, "sr": 5e-3,
            "vector": 5e-3, "grad": 0.25, "param": {"bulk": 0.1, "all": 2.0, "outlier_fraction": 0.005},
            "key_param": 5e-7, "bn": (1e-4, 1e-4), "queue": 1e-4},
}
PARAM_REL_SLACK = 1e-6   # post-step parameters: |d| <= t * lr + 1e-6 |ref|
KEY_PARAM_ATOL = 1e-9    # key-encoder parameters: |d| <= t |ref| + 1e-9
EXACT = ("labels", "num_batches_tracked", "queue_ptr", "rows__feature_bank")
PREFIXES = ("post_step__", "grad__", "init__")
OUTPUTS = {"logits": "logits", "labels": "labels", "sr": "sr", "embedding_q": "embedding",
           "proj_q": "proj_q", "proj_k": "proj_k"}
LOSSES = {"loss_sr": "L1", "loss_c": "contrastive", "loss_total": "total"}


@dataclass
class TrainCase:
    """One (model, scale) of the index: its init file and, per phase, {iteration: file}."""
    name: str
    scale: int
    init_file: str | None = None
    phases: dict = field(default_factory=lambda: defaultdict(dict))


def read_index(golden_dir: Path) -> dict:
    return json.loads((Path(golden_dir) / "train" / INDEX).read_text())


def train_cases(index: dict) -> list[TrainCase]:
    """Group the index's files by (model, scale)."""
    cases: dict[tuple, TrainCase] = {}
    for file_name, entry in index["files"].items():
        if "model" not in entry:
            continue  # the batch
        key = (entry["model"], int(entry["scale"]))
        case = cases.setdefault(key, TrainCase(*key))
        if "phase" in entry:
            case.phases[entry["phase"]][int(entry["iteration"])] = file_name
        else:
            case.init_file = file_name
    return list(cases.values())


def stage_of(iteration: int) -> str:
    return "it1" if iteration == 1 else "it2"


# ------------------------------------------------------------------------------------ state

def initial_state(golden_dir: Path, name: str, scale: int, queue_size: int | None = None) -> nn.Module:
    """The recipe's initial state (train mode is left to ``set_trainable``)."""
    kwargs = {} if queue_size is None else {"queue_size": queue_size}
    net = model.build_model(name, scale=scale, **kwargs)
    load_golden_weights(net, golden_dir, name, scale)   # also copies encoder_q params into encoder_k
    moco = net.encoder
    fill = fill_module(Path(golden_dir))
    with torch.no_grad():
        for module in moco.key_encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()              # MoCo copies parameters only
        shape = tuple(moco.queue.shape)
        uniform = fill.key_uniform("E.queue", shape).reshape(shape).astype(np.float32)
        moco.queue.copy_(F.normalize(torch.from_numpy(uniform), dim=0))
        moco.queue_ptr.zero_()
    return net


def _meanshift(net: nn.Module, key: str) -> torch.Tensor:
    """Our value of one of the authors' DASR MeanShift keys (a fixed buffer here)."""
    mean = dict(net.named_buffers())["generator.rgb_mean"].flatten()
    if key.endswith("weight"):
        return torch.eye(3, dtype=mean.dtype).view(3, 3, 1, 1)
    return -mean if "sub_mean" in key else mean


def our_tensor(net: nn.Module, name: str, authors_key: str, *, grad: bool = False) -> torch.Tensor:
    """Our value (or gradient; zeros when there is none) of the authors' ``authors_key``."""
    if authors_key in authors_constants(name):
        value = _meanshift(net, authors_key)
        return torch.zeros_like(value) if grad else value
    key = map_authors_key(authors_key, name)
    if grad:
        parameter = dict(net.named_parameters())[key]
        return parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
    return net.state_dict(keep_vars=True)[key]


def _select(ours: torch.Tensor, ref: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """The part of ``ours`` a golden array holds: listed codebook rows, or leading slices."""
    ours = as_array(ours)
    if rows is not None:
        return ours[rows]
    if ours.shape == ref.shape or ours.ndim != ref.ndim:
        return ours
    return ours[tuple(slice(0, n) for n in ref.shape)]


# ------------------------------------------------------------------------------------ rules

def _allowance_ratio(name: str, ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> GoldenResult:
    """max_i |d_i| / (atol + rtol |ref_i|) <= 1."""
    unit = f"x ({atol:g} + {rtol:g}|ref|)"
    if ours.shape != ref.shape:
        return shape_mismatch(name, ours, ref, 1.0, unit)
    ref64 = ref.astype(np.float64)
    ratio = np.abs(ours.astype(np.float64) - ref64) / (atol + rtol * np.abs(ref64))
    error = float(ratio.max(initial=0.0))
    return GoldenResult(name, error, 1.0, bool(error <= 1.0), unit)


def _parameter_moves(name: str, ours: np.ndarray, ref: np.ndarray, lr: float, rule) -> list[GoldenResult]:
    """Post-step G / encoder_q parameters: |d| beyond 1e-6|ref|, in units of lr."""
    unit = "lr"
    if ours.shape != ref.shape:
        return [shape_mismatch(name, ours, ref, 0.0, unit)]
    ref64 = ref.astype(np.float64)
    moves = np.maximum(np.abs(ours.astype(np.float64) - ref64) - PARAM_REL_SLACK * np.abs(ref64), 0.0) / lr
    moves = np.sort(moves.ravel())[::-1]
    outliers = math.floor(rule["outlier_fraction"] * moves.size)
    bulk = float(moves[outliers]) if moves.size > outliers else 0.0
    worst = float(moves[0]) if moves.size else 0.0
    return [GoldenResult(f"{name} (all but {outliers})", bulk, rule["bulk"], bulk <= rule["bulk"], unit),
            GoldenResult(f"{name} (max)", worst, rule["all"], worst <= rule["all"], unit)]


def compare_array(array: str, ours, ref: np.ndarray, stage: str, lr: float, label: str) -> list[GoldenResult]:
    """One recorded array under the README's rule for it. ``array`` is the golden array name
    (prefix + authors' key, or an output/loss name); ``label`` names the result."""
    tol = TOLERANCES[stage]
    ours = as_array(ours)
    key = next((array[len(p):] for p in PREFIXES if array.startswith(p)), array)
    if key.endswith(EXACT) or array in EXACT:
        return [compare_abs(label, ours, ref, 0.0)]
    if array == "loss_sr":
        return [compare_rel_max(label, ours, ref, tol["loss_sr"])]
    if array == "loss_c":
        return [compare_abs(label, ours, ref, tol["loss_c"])]
    if array == "loss_total":
        atol, rtol = tol["loss_total"]
        return [compare_abs(label, ours, ref, atol + rtol * abs(float(ref)))]
    if array in ("logits", "sr"):
        return [compare_rel_max(label, ours, ref, tol[array])]
    if array in OUTPUTS:
        return [compare_rel_max(label, ours, ref, tol["vector"])]
    if array.startswith("grad__"):
        return [compare_rel_max(label, ours, ref, tol["grad"])]
    if key == "E.queue":
        return [compare_abs(label, ours, ref, tol["queue"])]
    if key.endswith(("running_mean", "running_var")):
        return [_allowance_ratio(label, ours, ref, *tol["bn"])]
    if key.startswith("E.encoder_k."):
        return [_allowance_ratio(label, ours, ref, KEY_PARAM_ATOL, tol["key_param"])]
    return _parameter_moves(label, ours, ref, lr, tol["param"])


def compare_iteration(net: nn.Module, name: str, outputs: dict, losses: dict, ref, stage: str,
                      lr: float, case: str) -> list[GoldenResult]:
    """Every array of one iteration file (``ref``, an npz) against our state after the step."""
    rows = ref["rows__feature_bank"] if "rows__feature_bank" in ref.files else None
    results = []
    for array in ref.files:
        label = f"{case}/{array}"
        try:
            if array in LOSSES:
                ours = losses[LOSSES[array]]
            elif array in OUTPUTS:
                ours = outputs[OUTPUTS[array]]
            elif array == "rows__feature_bank":
                continue      # which rows the arrays hold; compared with the index by the caller
            else:
                prefix = next(p for p in PREFIXES if array.startswith(p))
                key = array[len(prefix):]
                ours = our_tensor(net, name, key, grad=prefix == "grad__")
                ours = _select(ours, ref[array], rows if key.endswith("feature_bank.weight") else None)
        except (KeyError, StopIteration) as error:
            results.append(failure(label, f"nothing of ours matches: {error}"))
            continue
        results += compare_array(array, ours, ref[array], stage, lr, label)
    return results


def check_initial_state(net: nn.Module, name: str, ref, case: str) -> list[GoldenResult]:
    """``*_train_init.npz``: exact, except the queue (within 1e-7 of the float32 and of the
    float64-normalised reference)."""
    rows = ref["rows__feature_bank"] if "rows__feature_bank" in ref.files else None
    queue = net.encoder.queue
    results = []
    for array in ref.files:
        label = f"{case}/{array}"
        if array == "rows__feature_bank":
            continue
        if array == "init__E.queue_float64_normalized":
            results.append(compare_abs(label, _select(queue, ref[array], None), ref[array], INIT_QUEUE_ATOL))
            continue
        key = array[len("init__"):]
        try:
            ours = _select(our_tensor(net, name, key), ref[array],
                           rows if key.endswith("feature_bank.weight") else None)
        except KeyError as error:
            results.append(failure(label, f"nothing of ours matches: {error}"))
            continue
        results.append(compare_abs(label, ours, ref[array], INIT_QUEUE_ATOL if key == "E.queue" else 0.0))
    return results


# ------------------------------------------------------------------------------------ running

def run_phase(net: nn.Module, name: str, phase_name: str, lr: float, x: torch.Tensor,
              hr: torch.Tensor, iterations: int):
    """Our trainer's steps on one batch; yields (iteration, outputs, losses, optimizer)."""
    phase = trainer.Phase(name=PHASES[phase_name], first=1, last=1, base_lr=lr, step=1, gamma=1.0,
                          origin=0)
    trainer.set_trainable(net, phase)
    optimizer = trainer.make_optimizer(net, lr)
    criterion = build_loss("1*L1", c_weight=C_WEIGHT)
    if phase.name == trainer.ENCODER:
        x = x * ENCODER_PIXEL_SCALE.get(name, 1.0)
    for iteration in range(1, iterations + 1):
        step = trainer.training_step(net, x, hr, phase, criterion, optimizer)
        yield iteration, step.outputs, step.losses, optimizer


def _optimizer_check(optimizer, index_model: dict, phase_name: str, case: str) -> list[GoldenResult]:
    """The tensors our Adam updates = the tensors the authors' Adam updated (theirs minus those
    it skipped for lack of a gradient); nothing when the index does not record them."""
    skipped = index_model["values"][phase_name].get("it1", {}).get("params_with_no_grad (skipped by Adam)")
    if skipped is None or "n_tensors_in_optimizer" not in index_model:
        return []
    expected = index_model["n_tensors_in_optimizer"] - skipped
    ours = sum(1 for group in optimizer.param_groups for p in group["params"] if p.grad is not None)
    held = sum(len(group["params"]) for group in optimizer.param_groups)
    error = abs(ours - expected) + (held - ours)   # we hold no parameter that gets no gradient
    return [GoldenResult(f"{case}/optimizer_tensors ({ours} updated, {expected} expected)",
                         float(error), 0.0, error == 0, "tensors")]


def _rows_check(ref, index_model: dict, label: str) -> list[GoldenResult]:
    """A file's ``rows__feature_bank`` (which codebook rows it holds) against the index."""
    if "rows__feature_bank" not in ref.files or "feature_bank_rows_recorded" not in index_model:
        return []
    return [compare_abs(f"{label}/rows__feature_bank", ref["rows__feature_bank"],
                        np.asarray(index_model["feature_bank_rows_recorded"]), 0.0)]


def check_train_case(golden_dir: Path, index: dict, case: TrainCase) -> list[GoldenResult]:
    """The init file and every phase file of one (model, scale)."""
    train_dir = Path(golden_dir) / "train"
    batch = np.load(train_dir / index["batch"]["file"])
    x, hr = torch.from_numpy(batch["x"]), torch.from_numpy(batch["hr"])
    any_file = next(iter(f for files in case.phases.values() for f in files.values()), None)
    queue_size = None
    if any_file is not None:
        queue_size = index["files"][any_file]["arrays"]["logits"]["shape"][1] - 1
    start = initial_state(golden_dir, case.name, case.scale, queue_size)
    results = []
    tag = f"{case.name}_x{case.scale}"
    index_model = index["models"][case.name]
    if case.init_file is not None:
        ref = np.load(train_dir / case.init_file)
        results += check_initial_state(start, case.name, ref, f"{tag}_init")
        results += _rows_check(ref, index_model, f"{tag}_init")
    for phase_name, files in case.phases.items():
        lr = float(index_model["values"][phase_name]["lr"])
        net = copy.deepcopy(start)
        for iteration, outputs, losses, optimizer in run_phase(net, case.name, phase_name, lr, x, hr,
                                                               max(files)):
            if iteration == 1:
                results += _optimizer_check(optimizer, index_model, phase_name, f"{tag}_{phase_name}")
            if iteration in files:
                label = Path(files[iteration]).stem
                ref = np.load(train_dir / files[iteration])
                results += compare_iteration(net, case.name, outputs, losses, ref, stage_of(iteration),
                                             lr, label)
                results += _rows_check(ref, index_model, label)
    return results


def check_train_goldens(golden_dir: Path) -> list[GoldenResult]:
    """Every (model, scale) of ``golden_dir/train/train_index.json``."""
    index = read_index(golden_dir)
    results = []
    for case in train_cases(index):
        try:
            results += check_train_case(golden_dir, index, case)
        except (KeyError, ValueError, RuntimeError, OSError) as error:
            results.append(failure(f"{case.name}_x{case.scale}", f"{type(error).__name__}: {error}"))
    return results
