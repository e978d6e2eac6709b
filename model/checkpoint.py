"""Checkpoints: our format, the authors' raw state dicts, atomic saving and strict loading.

Our format is a dict ``{'format': 'cdsr-framework/1', 'model_name', 'scale', 'model' (our
state dict), 'optimizer', 'scheduler', 'epoch', 'phase', 'config', 'model_kwargs'}`` saved with
``torch.save`` (files written before 'model_kwargs' existed lack it: read it with ``.get``);
everything in it must load with ``weights_only=True`` (tensors, numbers, strings, lists, dicts).

The authors' files are raw ``BlindSR.state_dict()``s (keys ``G.*`` and ``E.encoder_q.*``) without
``E.encoder_k.*``, ``E.queue`` and ``E.queue_ptr``. Their names map to ours through the rule
tables below (``_RULES``), which work in both directions.
"""
import math
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import model_names
from .dasr import DIV2K_RGB_MEAN, div2k_mean_255

FORMAT = "cdsr-framework/1"
OUR_FIELDS = ("model_name", "scale", "model", "optimizer", "scheduler", "epoch", "phase", "config",
              "model_kwargs")
_REQUIRED_FIELDS = ("model_name", "scale", "model")
_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_KEY_ENCODER = "encoder.key_encoder."
_QUERY_ENCODER = "encoder.query_encoder."
_MOCO_STATE = ("encoder.queue", "encoder.queue_ptr")
_LIST_LIMIT = 12  # how many keys an error message lists per category


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is for another model, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Key map. A rule maps a module path of the authors' to ours; "{i}"-style segments carry an
# index, optionally affine ("conv{i+1}", "E.{i*3+1}"). A rule with children maps the rest of the
# key with them; a rule without children accepts the rest only if it is one parameter/buffer
# name (weight, bias, BN statistics) or nothing.

@dataclass(frozen=True)
class _Rule:
    authors: str
    ours: str
    children: tuple["_Rule", ...] = ()


_SEGMENT = re.compile(r"(?P<text>[A-Za-z_]*)\{(?P<var>[a-z])(?:\*(?P<a>\d+))?(?:\+(?P<b>\d+))?\}")

_CDSR_ENCODER = (
    _Rule("conv{i+1}.conv1", "pixel_branch.layers.{i}.conv"),
    _Rule("conv{i+1}.bn1", "pixel_branch.layers.{i}.norm"),
    _Rule("pconv{i+1}.conv1", "patch_branch.layers.{i}.conv"),
    _Rule("pconv{i+1}.bn1", "patch_branch.layers.{i}.norm"),
    _Rule("mlp1.0", "fusion.fc1"),
    _Rule("mlp1.2", "fusion.fc2"),
    _Rule("feature_bank.weight", "codebook.entries"),
    _Rule("fc_q", "codebook.query_proj"),
    _Rule("fc_k", "codebook.key_proj"),
    _Rule("mlp.0", "head.fc1"),
    _Rule("mlp.2", "head.fc2"),
)
_DYNAMIC_CONV = (
    _Rule("kernel.0", "dynamic_conv.kernel_mlp.fc1"),
    _Rule("kernel.2", "dynamic_conv.kernel_mlp.fc2"),
    _Rule("conv", "dynamic_conv.pointwise"),
    _Rule("ca.conv_du.0", "channel_gate.reduce"),
    _Rule("ca.conv_du.2", "channel_gate.expand"),
)
_CDSR_DQA = (
    _Rule("sf_attn.gamma", "attention.gamma"),
    _Rule("sf_attn.query_conv", "attention.query"),
    _Rule("sf_attn.key_conv", "attention.key"),
    _Rule("sf_attn.value_conv", "attention.value"),
) + _DYNAMIC_CONV
_CDSR_BLOCK = (
    _Rule("SFT.fc.0", "condition.fc1"),
    _Rule("SFT.fc.1", "condition.act"),
    _Rule("SFT.fc.2", "condition.fc2"),
    _Rule("SFT.dab.da_conv{k+1}", "dqa_block.adapt{k+1}", _CDSR_DQA),
    _Rule("SFT.dab.conv{k+1}", "dqa_block.conv{k+1}"),
    _Rule("RDB{k+1}.conv{j+1}", "dense_blocks.{k}.convs.{j}"),
)
_CDSR_GENERATOR = (
    _Rule("compress.{i*2}", "embedding_mlp.{i}.linear"),
    _Rule("compress.{i*2+1}", "embedding_mlp.{i}.act"),
    _Rule("conv_first", "first_conv"),
    _Rule("RRDB_trunk.{i}", "blocks.{i}", _CDSR_BLOCK),
    _Rule("trunk_conv", "body_conv"),
    _Rule("upsampler.0", "upsampler.conv"),
)
_DASR_ENCODER = (
    _Rule("E.{i*3}", "layers.{i}.conv"),
    _Rule("E.{i*3+1}", "layers.{i}.norm"),
    _Rule("mlp.0", "head.fc1"),
    _Rule("mlp.2", "head.fc2"),
)
_DASR_BLOCK = (
    _Rule("da_conv{k+1}", "adapt{k+1}", _DYNAMIC_CONV),
    _Rule("conv{k+1}", "conv{k+1}"),
)
_DASR_GENERATOR = (
    _Rule("head.0", "head_conv"),
    _Rule("compress.0", "degradation_proj"),
    _Rule("body.{g}.body.5", "groups.{g}.conv"),  # the authors' 5 blocks, then the group's conv
    _Rule("body.{g}.body.{j}", "groups.{g}.blocks.{j}", _DASR_BLOCK),
    _Rule("body.5", "body_conv"),                 # after the authors' 5 groups
    _Rule("tail.0.{i*2}", "upsampler.{i}.conv"),
    _Rule("tail.1", "tail_conv"),
)


def _top_rules(generator: tuple, encoder: tuple) -> tuple[_Rule, ...]:
    return (
        _Rule("G", "generator", generator),
        _Rule("E.encoder_q", "encoder.query_encoder", encoder),
        _Rule("E.encoder_k", "encoder.key_encoder", encoder),
        _Rule("E.queue", "encoder.queue"),
        _Rule("E.queue_ptr", "encoder.queue_ptr"),
    )


_RULES = {"cdsr": _top_rules(_CDSR_GENERATOR, _CDSR_ENCODER),
          "dasr": _top_rules(_DASR_GENERATOR, _DASR_ENCODER)}

# DASR's MeanShift layers: constants in the authors' files, non-persistent buffers in ours.
_MEAN_SHIFT_KEYS = ("G.sub_mean.weight", "G.sub_mean.bias", "G.add_mean.weight", "G.add_mean.bias")
_MEAN_SHIFT_ATOL = 1e-3


def authors_constants(model_name: str) -> dict[str, torch.Tensor]:
    """The authors' saved keys that hold constants we do not store (DASR's MeanShift), with
    their standard values (float32); empty for CDSR."""
    if _model_name(model_name) != "dasr":
        return {}
    mean = div2k_mean_255()
    eye = torch.eye(3).view(3, 3, 1, 1)
    return {"G.sub_mean.weight": eye, "G.sub_mean.bias": -mean,
            "G.add_mean.weight": eye.clone(), "G.add_mean.bias": mean.clone()}


def _model_name(model_name: str) -> str:
    name = str(model_name).lower()
    if name not in _RULES:
        choices = ", ".join(sorted(_RULES))
        raise ValueError(f"unknown model {model_name!r}; choose one of: {choices}")
    return name


def _match(template: list[str], segments: list[str], bound: dict[str, int]) -> dict | None:
    bound = dict(bound)
    for pattern, segment in zip(template, segments):
        spec = _SEGMENT.fullmatch(pattern)
        if spec is None:
            if pattern != segment:
                return None
            continue
        number = segment[len(spec["text"]):]
        if not segment.startswith(spec["text"]) or not re.fullmatch(r"0|[1-9]\d*", number):
            return None
        a, b = int(spec["a"] or 1), int(spec["b"] or 0)
        if int(number) < b or (int(number) - b) % a:
            return None
        value = (int(number) - b) // a
        if bound.setdefault(spec["var"], value) != value:
            return None
    return bound


def _render(template: list[str], bound: dict[str, int]) -> list[str]:
    def one(pattern: str) -> str:
        spec = _SEGMENT.fullmatch(pattern)
        if spec is None:
            return pattern
        return spec["text"] + str(int(spec["a"] or 1) * bound[spec["var"]] + int(spec["b"] or 0))
    return [one(p) for p in template]


def _translate(segments: list[str], rules: tuple, source: str, target: str,
               bound: dict[str, int]) -> list[str] | None:
    for rule in rules:
        template = getattr(rule, source).split(".")
        if len(segments) < len(template):
            continue
        matched = _match(template, segments[:len(template)], bound)
        if matched is None:
            continue
        rest = segments[len(template):]
        if rule.children:
            tail = _translate(rest, rule.children, source, target, matched)
            if tail is None:
                continue
        elif rest and not (len(rest) == 1 and rest[0] in _LEAVES):
            continue
        else:
            tail = rest
        return _render(getattr(rule, target).split("."), matched) + tail
    return None


def _map_key(key: str, model_name: str, source: str, target: str) -> str:
    rules = _RULES[_model_name(model_name)]
    mapped = _translate(key.split("."), rules, source, target, {})
    if mapped is not None:
        mapped_key = ".".join(mapped)
        back = _translate(mapped, rules, target, source, {})
        if back is not None and ".".join(back) == key:
            return mapped_key
    what = "authors'" if source == "authors" else "our"
    raise KeyError(f"{key!r} is not a known {what} {model_name.upper()} key")


def map_authors_key(key: str, model_name: str) -> str:
    """Our name for one of the authors' keys (also ``E.encoder_k.*``, ``E.queue``,
    ``E.queue_ptr``); KeyError for unknown keys and for DASR's MeanShift constants
    (see ``authors_constants``)."""
    return _map_key(key, model_name, "authors", "ours")


def map_our_key(key: str, model_name: str) -> str:
    """The authors' name for one of our keys; KeyError if there is none."""
    return _map_key(key, model_name, "ours", "authors")


def _split_authors(state_dict: dict, model_name: str) -> tuple[dict, list[str]]:
    """(mapped state dict in our names, authors' keys that map to nothing); checks and drops
    DASR's MeanShift constants."""
    name = _model_name(model_name)
    constants = authors_constants(name)
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        if key in constants:
            expected = constants[key]
            if (tuple(value.shape) != tuple(expected.shape)
                    or not torch.allclose(value.detach().cpu().double(), expected.double(),
                                          rtol=0, atol=_MEAN_SHIFT_ATOL)):
                raise CheckpointError(f"{key} does not hold DASR's MeanShift constant (identity "
                                      f"weight, bias -/+255*{DIV2K_RGB_MEAN}), which this "
                                      "framework keeps fixed")
            continue
        try:
            mapped[map_authors_key(key, name)] = value
        except KeyError:
            unknown.append(key)
    return mapped, unknown


def authors_to_ours(state_dict: dict, model_name: str) -> dict:
    """Rename an authors' state dict to our keys (same tensors). DASR's MeanShift constants are
    checked and dropped. CheckpointError for keys that have no counterpart."""
    mapped, unknown = _split_authors(state_dict, model_name)
    if unknown:
        raise CheckpointError(f"unknown {model_name.upper()} authors' key(s): {_listing(unknown)}")
    return mapped


def ours_to_authors(state_dict: dict, model_name: str, *, keep_momentum: bool = False) -> dict:
    """Rename our state dict to the authors' keys, as their trainer saves it: without the key
    encoder and the queue unless ``keep_momentum``; DASR's MeanShift constants are added."""
    name = _model_name(model_name)
    out = dict(authors_constants(name))
    for key, value in state_dict.items():
        if not keep_momentum and (key.startswith(_KEY_ENCODER) or key in _MOCO_STATE):
            continue
        try:
            out[map_our_key(key, name)] = value
        except KeyError as error:
            raise CheckpointError(error.args[0]) from None
    return out


# ---------------------------------------------------------------------------------------------
# Format detection and model/scale inference.

def detect_format(obj: Any) -> str:
    """'ours' or 'authors'; CheckpointError for anything else."""
    if isinstance(obj, dict) and "format" in obj:
        if obj["format"] != FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {obj['format']!r} "
                                  f"(expected {FORMAT!r})")
        return "ours"
    if (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)
            and all(k.startswith(("G.", "E.")) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values())):
        return "authors"
    raise CheckpointError("not a recognised checkpoint: expected our format "
                          f"({{'format': {FORMAT!r}, ...}}) or an authors' state dict "
                          "(tensors under keys starting with 'G.' / 'E.')")


def _square_root(n: int, what: str) -> int:
    root = math.isqrt(n)
    if root * root != n:
        raise CheckpointError(f"cannot infer the scale: {what} has {n} output channels")
    return root


def infer_authors_model(state_dict: dict) -> tuple[str, int]:
    """(model name, scale) of an authors' state dict, from its key names and upsampler shapes."""
    keys = state_dict.keys()
    try:
        if any(k.startswith("G.RRDB_trunk.") for k in keys):
            channels = state_dict["G.upsampler.0.weight"].shape[0]
            if channels % 3:
                raise CheckpointError(f"cannot infer the scale: G.upsampler.0 has {channels} "
                                      "output channels, not 3*s^2")
            return "cdsr", _square_root(channels // 3, "G.upsampler.0 (3*s^2)")
        if any(k.startswith("G.body.") for k in keys):
            n_feats = state_dict["G.head.0.weight"].shape[0]
            scale, stage = 1, 0
            while f"G.tail.0.{2 * stage}.weight" in state_dict:
                channels = state_dict[f"G.tail.0.{2 * stage}.weight"].shape[0]
                scale *= _square_root(channels // n_feats, f"G.tail.0.{2 * stage}")
                stage += 1
            if stage == 0:
                raise KeyError("G.tail.0.0.weight")
            return "dasr", scale
    except KeyError as missing:
        raise CheckpointError(f"authors' checkpoint lacks {missing.args[0]}; "
                              "cannot infer its scale") from None
    raise CheckpointError("authors' checkpoint is neither CDSR (G.RRDB_trunk.*) "
                          "nor DASR (G.body.*)")


def describe(model_name: str, scale: int) -> str:
    """'CDSR x4'-style label used in messages."""
    return f"{str(model_name).upper()} x{scale}"


# ---------------------------------------------------------------------------------------------
# Reading, writing, loading.

def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace`` onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


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
    record["model_name"] = str(record["model_name"]).lower()
    if record["model_name"] not in model_names():
        raise ValueError(f"unknown model {fields['model_name']!r}; choose one of: "
                         f"{', '.join(model_names())}")
    record["scale"] = int(record["scale"])
    for field in ("config", "phase", "epoch", "model_kwargs"):
        _check_plain(record[field], field)
    atomic_torch_save(record, path)


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
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        if isinstance(error, pickle.UnpicklingError):
            reason = ("it is corrupt, or it pickles Python objects besides tensors, which are "
                      "not loaded for safety")
        else:
            detail = str(error).splitlines()[0] if str(error) else ""
            reason = "it is empty, truncated or corrupt" + (f" ({detail})" if detail else "")
        raise CheckpointError(f"cannot read checkpoint {path} ({type(error).__name__}): {reason}; "
                              "pass a file saved by this project or a plain state dict") from error


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _fill_momentum_state(model: nn.Module, state: dict) -> dict:
    """Complete an authors' state dict (our names) that lacks the MoCo key encoder and queue:
    key-encoder parameters are copied from the checkpoint's query encoder (what MoCo's
    constructor does), its buffers and the queue keep the model's current values."""
    own = model.state_dict()
    state = dict(state)
    if not any(k.startswith(_KEY_ENCODER) for k in state):
        parameters = {name for name, _ in model.named_parameters()}
        for key in own:
            if not key.startswith(_KEY_ENCODER):
                continue
            query_key = _QUERY_ENCODER + key[len(_KEY_ENCODER):]
            if key in parameters:
                if query_key in state:
                    state[key] = state[query_key]
            else:
                state[key] = own[key]
    for key in _MOCO_STATE:
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
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("wrong shapes", wrong))
                if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, source: Any) -> str:
    """Load weights into ``model`` (a ``BlindSRModel``) from a path or a loaded checkpoint.

    Detects our format or an authors' state dict, checks the model name and scale, maps the
    keys, completes an authors' file's key encoder and queue, and loads strictly.
    Returns the detected format, 'ours' or 'authors'.
    """
    label = str(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    checkpoint = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    fmt = detect_format(checkpoint)
    if fmt == "ours":
        absent = [f for f in _REQUIRED_FIELDS if f not in checkpoint]
        if absent:
            raise CheckpointError(f"{label} lacks field(s) {absent}")
        name, scale, state = checkpoint["model_name"], checkpoint["scale"], checkpoint["model"]
        unknown = []
        if not isinstance(state, dict):
            raise CheckpointError(f"{label}: field 'model' is a {type(state).__name__}, "
                                  "not a state dict")
    else:
        name, scale = infer_authors_model(checkpoint)
    if (str(name).lower(), int(scale)) != (model.name, int(model.scale)):
        raise CheckpointError(f"checkpoint is for {describe(name, scale)} but the model is "
                              f"{describe(model.name, model.scale)}")
    annotate = None
    if fmt == "authors":
        state, unknown = _split_authors(checkpoint, name)
        state = _fill_momentum_state(model, state)
        annotate = partial(_with_authors_name, model_name=name)
    load_state_strict(model, state, extra_unexpected=unknown, source=label, annotate=annotate)
    return fmt


def _with_authors_name(key: str, model_name: str) -> str:
    try:
        return f"{key} (authors' {map_our_key(key, model_name)})"
    except KeyError:
        return key
