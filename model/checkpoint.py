"""Checkpoints in our format: atomic saving, safe reading, strict loading, ``load_model``.

Our format is a dict ``{'format': 'cdsr-framework/1', 'model_name', 'scale', 'model' (our
state dict), 'optimizer', 'scheduler', 'epoch', 'phase', 'config', 'model_kwargs', 'progress',
'model_ema', 'teacher'}`` saved with ``torch.save`` (files written before 'model_kwargs' existed
lack it: read it with ``.get``); everything in it must load with ``weights_only=True`` (tensors,
numbers, strings, lists, dicts). 'model_ema', when not None, is the state dict of the moving
average of the weights a run with --ema_decay kept (``model/ema.py``), which ``load_model``
loads by default. A KDSR distillation run (``KDSRDistillation``) stores its student as the model
and its teacher under 'teacher' = ``{'model_name', 'model_kwargs', 'model', 'model_ema'}`` (same
scale): ``load_model`` gives the student, or the teacher when asked for it by name; a file
written in the teacher stage holds an untrained student, which ``load_model`` refuses.

``load_weights`` and ``load_model`` also take the authors' raw state dicts (their key map and
model inference: ``model/authors_format.py``, whose public names are re-exported here), and
state dicts saved from a wrapped model (``module.``, ``_orig_mod.`` key prefixes, removed on read).
"""
import logging
import os
import pickle
import random
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from . import build_model, canonical_name, model_names, names_match
from .kdsr import kdsr_name, kdsr_role_and_size
from .kdsr_pair import KDSRDistillation
from .authors_format import (AUTHORS_KEY_PREFIXES, KEY_ENCODER, MOCO_STATE, CheckpointError,
                             authors_key_note, infer_authors_model, listing, split_authors_state)
# Re-exported: scripts and users' code import the authors' key map from here.
from .authors_format import (authors_constants, authors_to_ours, map_authors_key, map_our_key,
                             ours_to_authors)

__all__ = ["FORMAT", "OUR_FIELDS", "CheckpointError", "detect_format", "describe", "atomic_torch_save",
           "save_checkpoint", "read_checkpoint", "strip_wrapper_prefixes", "load_state_strict",
           "checkpoint_identity", "model_fields", "load_weights",
           "load_start_weights", "has_ema", "averaged_weights", "with_weights",
           "load_model", "authors_constants", "authors_to_ours", "map_authors_key", "map_our_key",
           "ours_to_authors", "infer_authors_model"]

FORMAT = "cdsr-framework/1"
OUR_FIELDS = ("model_name", "scale", "model", "optimizer", "scheduler", "epoch", "phase", "config",
              "model_kwargs", "progress", "model_ema", "teacher")
TEACHER_PHASE = "teacher"             # model.training.TEACHER: its files hold an untrained student
_REQUIRED_FIELDS = ("model_name", "scale", "model")
_QUERY_ENCODER = "encoder.query_encoder."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")   # DataParallel / DDP, torch.compile
Source = Union[str, os.PathLike, dict]
log = logging.getLogger("cdsr.model")  # a child of the run's logger


def detect_format(obj: Any) -> str:
    """'ours' or 'authors'; CheckpointError for anything else."""
    if isinstance(obj, dict) and "format" in obj:
        if obj["format"] != FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {obj['format']!r} "
                                  f"(expected {FORMAT!r})")
        return "ours"
    if (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)
            and all(k.startswith(AUTHORS_KEY_PREFIXES) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values())):
        return "authors"
    raise CheckpointError("not a recognised checkpoint: expected our format "
                          f"({{'format': {FORMAT!r}, ...}}) or an authors' state dict "
                          "(tensors under keys starting with 'G.' / 'E.' / 'E_st.')")


def strip_wrapper_prefixes(checkpoint: Any, label: str = "checkpoint") -> Any:
    """``checkpoint`` (ours, or an authors' state dict) with the key prefixes of a wrapper
    removed when every weight key carries one: ``module.`` (a state dict saved from DataParallel
    or DDP), ``_orig_mod.`` (from ``torch.compile``), or both nested. Said once in the log;
    anything else is returned unchanged."""
    ours = isinstance(checkpoint, dict) and "format" in checkpoint
    state = checkpoint.get("model") if ours else checkpoint
    if not (isinstance(state, dict) and state and all(isinstance(k, str) for k in state)):
        return checkpoint
    stripped, removed = {}, []
    for key, value in state.items():
        bare = key
        while bare.startswith(WRAPPER_PREFIXES):
            prefix = next(p for p in WRAPPER_PREFIXES if bare.startswith(p))
            removed.append(prefix)
            bare = bare[len(prefix):]
        if bare == key:
            return checkpoint                         # not every key is wrapped: leave it
        stripped[bare] = value
    if len(stripped) != len(state):
        return checkpoint
    log.info(f"{label}: removed the key prefix {' and '.join(map(repr, dict.fromkeys(removed)))} of "
             "a DataParallel/DDP or compiled model from every weight")
    return {**checkpoint, "model": stripped} if ours else stripped


def describe(model_name: str, scale: int) -> str:
    """'CDSR x4'-style label used in messages."""
    return f"{str(model_name).upper()} x{scale}"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace`` onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = None
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except (OSError, RuntimeError) as error:
        # torch.save reports a full disk as RuntimeError("... file write failed") or as
        # RuntimeError("[enforce fail at inline_container.cc:...] . unexpected pos ...") whose
        # cause or context is the OSError (ENOSPC) of the write that failed.
        cause = _os_error_in(error)
        if cause is None and "write failed" not in str(error):
            raise                                # not a write failure: e.g. an unpicklable field
        reason = getattr(cause, "strerror", None) or str(error).strip().splitlines()[-1]
        raise OSError(f"cannot write checkpoint {path} ({reason}); the previous file there, if "
                      "any, is intact: free some space or fix the permissions, then --resume") from error
    finally:
        if temp is not None and Path(temp).exists():
            Path(temp).unlink()


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The first OSError in ``error``'s chain of causes and contexts (``error`` included)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> None:
    """Write our format atomically. Fields: model_name, scale, model (state dict) required;
    optimizer, scheduler, epoch, phase, config optional (default None); model_kwargs optional:
    constructor keywords other than scale (e.g. a small test model's widths), which readers
    pass to ``build_model`` (None = the paper-size model)."""
    unknown = sorted(set(fields) - set(OUR_FIELDS))
    missing = [f for f in _REQUIRED_FIELDS if f not in fields]
    if unknown or missing:
        raise ValueError(f"save_checkpoint: unknown field(s) {unknown}, missing {missing}; "
                         f"fields are {', '.join(OUR_FIELDS)}")
    record = {"format": FORMAT, **{f: fields.get(f) for f in OUR_FIELDS}}
    record["model_name"] = canonical_name(record["model_name"])
    if record["model_name"] not in model_names():
        raise ValueError(f"save_checkpoint: unknown model {fields['model_name']!r}; choose one of: "
                         f"{', '.join(model_names())}")
    record["scale"] = int(record["scale"])
    for field in ("config", "phase", "epoch", "model_kwargs"):
        _check_plain(record[field], field)
    if record["teacher"] is not None:
        _check_plain({k: v for k, v in record["teacher"].items() if k not in ("model", "model_ema")},
                     "teacher")
    atomic_torch_save(record, path)


def model_fields(model: nn.Module, average: Optional[nn.Module] = None) -> dict[str, Any]:
    """The fields of our format that hold ``model``: model_name, scale, model_kwargs, model,
    model_ema (the state dict of ``average``, the moving average of its weights: a copy of the
    model, or None) and, for a ``KDSRDistillation``, its student as the model and its teacher
    under 'teacher'."""
    if isinstance(model, KDSRDistillation):
        teacher = model.teacher
        return dict(model_fields(model.student, average and average.student), teacher=dict(
            model_name=teacher.name, model_kwargs=teacher.hparams, model=teacher.state_dict(),
            model_ema=average.teacher.state_dict() if average is not None else None))
    return dict(model_name=model.name, scale=model.scale, model_kwargs=model.hparams,
                model=model.state_dict(),
                model_ema=average.state_dict() if average is not None else None)


def _teacher_part(checkpoint: dict) -> dict:
    """The teacher a distillation run's file of ours holds, as a file of its own."""
    teacher = checkpoint["teacher"]
    return {"format": FORMAT, "model_name": teacher["model_name"], "scale": checkpoint["scale"],
            "model_kwargs": teacher.get("model_kwargs"), "model": teacher["model"]}


def _part_named(checkpoint: dict, name: str, label: str) -> dict:
    """``checkpoint`` itself, or the teacher it holds when ``name`` is that teacher; a student
    of a file written in the teacher stage is refused (it is untrained)."""
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("teacher"), dict)):
        return checkpoint
    if canonical_name(checkpoint["teacher"].get("model_name", "")) == name:
        return _teacher_part(checkpoint)
    if checkpoint.get("phase") == TEACHER_PHASE:
        teacher = checkpoint["teacher"]["model_name"]
        raise CheckpointError(f"{label} was written in the teacher stage of a distillation run: its "
                              f"{describe(checkpoint['model_name'], checkpoint['scale'])} is not "
                              f"trained yet; score its teacher with --model {teacher}, or a "
                              "checkpoint of the distillation stage")
    return checkpoint


def _check_plain(value: Any, where: str) -> None:
    """Reject values ``torch.load(weights_only=True)`` would refuse, at save time."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"save_checkpoint: {where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"save_checkpoint: {where} is a {type(value).__name__}; use plain values "
                     "(None, bool, int, float, str, lists, dicts) so the file loads with "
                     "weights_only=True")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file on the CPU (``weights_only=True``); CheckpointError if it is
    missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        if isinstance(error, pickle.UnpicklingError):
            reason = ("it is corrupt, or it pickles Python objects besides tensors, which are "
                      "not loaded for safety")
        else:
            detail = str(error).splitlines()[0] if str(error) else ""
            reason = "it is empty, truncated or corrupt" + (f" ({detail})" if detail else "")
        raise CheckpointError(f"cannot read checkpoint {path} ({type(error).__name__}): {reason}; "
                              "pass a file saved by this project or a plain state dict") from error
    return strip_wrapper_prefixes(checkpoint, str(path))


def _fill_momentum_state(model: nn.Module, state: dict) -> dict:
    """Complete an authors' state dict (our names) that lacks the MoCo key encoder and queue:
    key-encoder parameters are copied from the checkpoint's query encoder (what MoCo's
    constructor does), its buffers and the queue keep the model's current values."""
    own = model.state_dict()
    state = dict(state)
    if not any(k.startswith(KEY_ENCODER) for k in state):
        parameters = {name for name, _ in model.named_parameters()}
        for key in own:
            if not key.startswith(KEY_ENCODER):
                continue
            query_key = _QUERY_ENCODER + key[len(KEY_ENCODER):]
            if key in parameters:
                if query_key in state:
                    state[key] = state[query_key]
            else:
                state[key] = own[key]
    for key in MOCO_STATE:
        if key not in state and key in own:
            state[key] = own[key]
    return state


def _shape_fits(stored: torch.Size, expected: torch.Size) -> bool:
    # torch itself accepts a (1,) tensor for a 0-d one (old files store num_batches_tracked so).
    return tuple(stored) == tuple(expected) or (len(expected) == 0 and tuple(stored) == (1,))


def load_state_strict(model: nn.Module, state: dict, *, extra_unexpected: Sequence[str] = (),
                      source: str = "checkpoint",
                      annotate: Callable[[str], str] | None = None) -> None:
    """``model.load_state_dict(state, strict=True)`` after checking keys and shapes; one
    CheckpointError names every missing, unexpected and mis-shaped key (``annotate`` may add
    e.g. the authors' name to each of our keys)."""
    own = model.state_dict()
    label = annotate or (lambda key: key)
    missing = [label(k) for k in own if k not in state]
    unexpected = [label(k) for k in state if k not in own] + list(extra_unexpected)
    wrong = [f"{label(k)}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
             for k in own if k in state and not _shape_fits(state[k].shape, own[k].shape)]
    problems = [f"{label}: {listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("wrong shapes", wrong))
                if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(problems)})")
    model.load_state_dict(state, strict=True)


def _opened(source: Source) -> tuple[dict, str]:
    """(the loaded checkpoint, its label for messages) of a path or an already loaded one."""
    if isinstance(source, (str, os.PathLike)):
        return read_checkpoint(source), str(source)
    return strip_wrapper_prefixes(source), "checkpoint"


def checkpoint_identity(checkpoint: dict, label: str = "checkpoint") -> tuple[str, str, int]:
    """(format 'ours' or 'authors', model name, scale) of a loaded checkpoint; CheckpointError
    for anything else or an incomplete file of ours."""
    fmt = detect_format(checkpoint)
    if fmt == "authors":
        return (fmt, *infer_authors_model(checkpoint))
    absent = [f for f in _REQUIRED_FIELDS if f not in checkpoint]
    if absent:
        raise CheckpointError(f"{label} lacks field(s) {absent}")
    if not isinstance(checkpoint["model"], dict):
        raise CheckpointError(f"{label}: field 'model' is a {type(checkpoint['model']).__name__}, "
                              "not a state dict")
    return fmt, str(checkpoint["model_name"]).lower(), int(checkpoint["scale"])


def load_weights(model: nn.Module, source: Source, label: Optional[str] = None) -> str:
    """Load weights into ``model`` (a ``BlindSRModel``) from a path or a loaded checkpoint
    (``label``: how messages name it, e.g. the path it was read from).

    Detects our format or an authors' state dict, checks the model name and scale and that
    every weight is finite, maps the keys, completes an authors' file's key encoder and queue,
    and loads strictly. Returns the detected format, 'ours' or 'authors'.
    """
    checkpoint, found_label = _opened(source)
    label = label or found_label
    if isinstance(model, KDSRDistillation):
        return _load_pair(model, checkpoint, label)
    return _load_opened(model, _part_named(checkpoint, model.name, label), label)


def _load_pair(pair: KDSRDistillation, checkpoint: dict, label: str) -> str:
    """A distillation run's file of ours into the teacher and student of ``pair``."""
    if detect_format(checkpoint) != "ours" or not isinstance(checkpoint.get("teacher"), dict):
        raise CheckpointError(f"{label} holds one network, not the teacher and student of a KDSR "
                              "distillation run: pass the teacher with --pre_train_TA and the "
                              "student (or the teacher, whose generator it then starts from) "
                              "with --pre_train_ST")
    _load_opened(pair.teacher, _teacher_part(checkpoint), f"{label} (teacher)")
    return _load_opened(pair.student, checkpoint, label)


def _load_opened(model: nn.Module, checkpoint: dict, label: str) -> str:
    fmt, name, scale = checkpoint_identity(checkpoint, label)
    if (name, scale) != (model.name, int(model.scale)):
        raise CheckpointError(f"{label} is for {describe(name, scale)} but the model is "
                              f"{describe(model.name, model.scale)}")
    weights = checkpoint["model"] if fmt == "ours" else checkpoint
    broken = [key for key, value in weights.items() if isinstance(value, torch.Tensor)
              and value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(f"{label} holds non-finite weights ({listing(broken)}): the run "
                              "that wrote it diverged; use an earlier checkpoint")
    if fmt == "ours":
        load_state_strict(model, checkpoint["model"], source=label)
        return fmt
    state, unknown = split_authors_state(checkpoint, name)
    load_state_strict(model, _fill_momentum_state(model, state), extra_unexpected=unknown,
                      source=label, annotate=partial(authors_key_note, model_name=name))
    return fmt


def load_start_weights(model: nn.Module, flag: str, source: Source) -> str:
    """Load the weights a training run starts from and say what was loaded (for the log).

    ``--pre_train``: ``model`` as a whole (a KDSR pair: a distillation run's file of ours).
    ``--pre_train_TA``: the KDSR teacher (``model`` itself, or a pair's teacher) from a teacher
    file, ours or the authors' (their ``model_TA_*.pt``), or the teacher of a distillation run.
    ``--pre_train_ST``: a pair's student from a student file, or, from a teacher file, its
    generator alone: their stage-4 scripts pass the teacher's file, loaded with strict=False.
    """
    if flag == "--pre_train":
        return f"loaded {load_weights(model, source)} weights from {source}"
    pair = isinstance(model, KDSRDistillation)
    if flag == "--pre_train_TA":
        teacher = model.teacher if pair else model
        return f"{teacher.name.upper()}: {load_weights(teacher, source)} weights from {source}"
    if flag != "--pre_train_ST" or not pair:
        raise ValueError(f"{flag} does not start a {getattr(model, 'name', 'model')} run")
    student = model.student
    checkpoint, label = _opened(source)
    fmt, name, scale = checkpoint_identity(checkpoint, label)
    kdsr = kdsr_role_and_size(name)
    if kdsr is None or kdsr[0] != "t":
        return f"{student.name.upper()}: {load_weights(student, checkpoint, label)} weights from {source}"
    if (name, scale) != (kdsr_name("t", student.size), student.scale):
        raise CheckpointError(f"{label} is {describe(name, scale)}; the student "
                              f"{describe(student.name, student.scale)} starts from the "
                              f"generator of {describe(kdsr_name('t', student.size), student.scale)}")
    teacher = build_model(name, scale=scale, **(dict(checkpoint.get("model_kwargs") or {})
                                                if fmt == "ours" else {}))
    _load_opened(teacher, checkpoint, label)
    load_state_strict(student.generator, teacher.generator.state_dict(), source=f"{label}'s generator")
    return (f"{student.name.upper()}: the generator of the teacher {source} ({fmt} format; as the "
            "authors' strict=False load), the encoder from its own initialisation")


def has_ema(checkpoint: dict) -> bool:
    """Whether a loaded checkpoint holds a moving average of its weights (``model_ema``)."""
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_ema"), dict)


def averaged_weights(checkpoint: dict) -> dict:
    """``checkpoint`` with the moving average of the weights in place of the trained weights
    (``model``, and a distillation run's teacher's); ``has_ema(checkpoint)`` must hold."""
    averaged = {**checkpoint, "model": checkpoint["model_ema"]}
    teacher = checkpoint.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("model_ema"), dict):
        averaged["teacher"] = {**teacher, "model": teacher["model_ema"]}
    return averaged


def with_weights(checkpoint: dict, ema: bool, label: str = "checkpoint") -> dict:
    """``checkpoint`` whose weights are its moving average when ``ema`` and it holds one (said
    in the log), else ``checkpoint`` itself (the trained weights)."""
    if not (ema and has_ema(checkpoint)):
        return checkpoint
    log.info(f"{label}: using the moving average of the weights (--ema_decay), not the trained "
             "weights (test.py --no_ema)")
    return averaged_weights(checkpoint)


def load_model(source: Source, device: Union[str, torch.device] = "cpu", *,
               model_name: Optional[str] = None, scale: Optional[int] = None,
               ema: bool = True) -> nn.Module:
    """The model a checkpoint (path, or loaded: ours or the authors') holds, with its weights,
    on ``device`` in eval mode. Its name and scale (and for our files the constructor keywords
    ``model_kwargs``, e.g. a small model's widths) come from the file; ``model_name`` and
    ``scale``, when given, must agree (CheckpointError otherwise; 'blindsr', the authors' name,
    agrees with DASR and KDSR). A distillation run's file gives its student, or its teacher
    when ``model_name`` names that teacher. ``ema``: a file that holds a moving average of the
    weights (--ema_decay) gives the average; False: the trained weights. A file without one (the
    authors', or a run without --ema_decay) gives its weights either way."""
    checkpoint, label = _opened(source)
    checkpoint = with_weights(checkpoint, ema, label)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("teacher"), dict):
        stored = checkpoint["model_name"]
        asked = (stored if model_name is None or names_match(model_name, stored)
                 else canonical_name(model_name))
        checkpoint = _part_named(checkpoint, asked, label)
    fmt, name, found = checkpoint_identity(checkpoint, label)
    wanted_scale = found if scale is None else int(scale)
    if (model_name is not None and not names_match(model_name, name)) or wanted_scale != found:
        wanted = name if model_name is None or names_match(model_name, name) else canonical_name(model_name)
        raise CheckpointError(f"{label} holds {describe(name, found)}, not "
                              f"{describe(wanted, wanted_scale)} as requested")
    kwargs = dict(checkpoint.get("model_kwargs") or {}) if fmt == "ours" else {}
    model = build_model(name, scale=found, **kwargs)
    _load_opened(model, checkpoint, label)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# The random state of a run, for mid-epoch checkpoints.

def rng_states() -> dict:
    """Every global random state (torch CPU and CUDA, NumPy, Python) as tensors and plain
    values, so a checkpoint holding them loads with ``weights_only=True``."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()]}


def set_rng_states(states: dict) -> None:
    """Restore what ``rng_states`` returned (CUDA states only where the devices exist)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][:torch.cuda.device_count()])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    random.setstate(tuple(tuple(part) if isinstance(part, list) else part for part in states["python"]))
