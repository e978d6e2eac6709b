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
3. after every iteration that has a file, every recorded array against the README's tolerances
   (the rules: ``scripts/golden/train_compare.py``).

Where the authors' code is inconsistent the checker feeds what the golden data states: CDSR's
authors' encoder-only phase gives the encoder 0..255 pixels while ours (like their joint phase)
gives it [0,1], so that phase gets ``lr * 255`` (``ENCODER_PIXEL_SCALE``; exact for integer
pixels). Our encoder phase optimises only the query encoder; theirs also holds G, which gets no
gradient there, so Adam updates the same tensors (checked: ``optimizer_tensors``).
"""
import copy
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import model
from model import training
from loss import build_loss

from .common import GoldenResult, compare_abs, failure, fill_module, load_golden_weights
from .train_compare import check_initial_state, compare_iteration, stage_of

INDEX = "train_index.json"
PHASES = {"joint": training.JOINT, "pretrain": training.ENCODER}
ENCODER_PIXEL_SCALE = {"cdsr": 255.0}  # the authors' CDSR encoder-only phase reads 0..255 pixels
C_WEIGHT = 1.0


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


# ------------------------------------------------------------------------------------ running

def run_phase(net: nn.Module, name: str, phase_name: str, lr: float, x: torch.Tensor,
              hr: torch.Tensor, iterations: int):
    """Our trainer's steps on one batch; yields (iteration, outputs, losses, optimizer)."""
    phase = training.Phase(name=PHASES[phase_name], first=1, last=1, base_lr=lr, step=1, gamma=1.0,
                          origin=0)
    training.set_trainable(net, phase)
    optimizer = training.make_optimizer(net, lr)
    criterion = build_loss("1*L1", c_weight=C_WEIGHT)
    if phase.name == training.ENCODER:
        x = x * ENCODER_PIXEL_SCALE.get(name, 1.0)
    for iteration in range(1, iterations + 1):
        step = training.training_step(net, x, hr, phase, criterion, optimizer)
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
