"""The authors' checkpoint format: raw ``BlindSR.state_dict()``s. CDSR and DASR: keys ``G.*``,
``E.encoder_q.*`` (no MoCo ``E.encoder_k.*``, ``E.queue``, ``E.queue_ptr``). KDSR: ``G.*`` and
the teacher's ``E.*`` or the student's ``E_st.*`` (their trainers save the whole state dict,
without a ``module.`` prefix). Their key names map to ours through the rule tables ``_RULES``
(one per published model, both directions); ``infer_authors_model`` reads model and scale from
keys and shapes. Loading: ``model.checkpoint.load_weights``."""
import math
import re
from dataclasses import dataclass

import torch

from .dasr import DIV2K_RGB_MEAN, div2k_mean_255
from .kdsr import SIZES, KDSRTeacher, kdsr_name

_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
AUTHORS_KEY_PREFIXES = ("G.", "E.", "E_st.")  # every key of an authors' checkpoint starts so
KEY_ENCODER = "encoder.key_encoder."
MOCO_STATE = ("encoder.queue", "encoder.queue_ptr")
_LIST_LIMIT = 12  # how many keys an error message lists per category


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is for another model, or does not fit the model."""


def listing(keys: list[str]) -> str:
    """The first keys of ``keys``, comma-separated, with a count of the rest (for messages)."""
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


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


_KDSR_GENERATOR = (
    _Rule("head.0", "head_conv"),
    _Rule("body.0.body.{j}.da_conv1.kernel.0", "blocks.{j}.dynamic_conv.kernel_mlp.fc1"),
    _Rule("body.0.body.{j}.da_conv1.kernel.2", "blocks.{j}.dynamic_conv.kernel_mlp.fc2"),
    _Rule("body.0.body.{j}.conv1", "blocks.{j}.conv"),  # the authors' single DAG, then its conv
    _Rule("body.1", "body_conv"),
    _Rule("tail.0.{i*2}", "upsampler.{i}.conv"),
    _Rule("tail.1", "tail_conv"),
)


def _kdsr_encoder(n_resblocks: int) -> tuple[_Rule, ...]:
    """Their ``E`` is one Sequential: conv, act, n residual blocks, then conv/act three times and
    the pooling; the indices of the last three convs depend on n."""
    n = n_resblocks
    return (
        _Rule("E.0", "first_conv"),
        _Rule("E.{i+2}.body.0", "res_blocks.{i}.conv1"),
        _Rule("E.{i+2}.body.2", "res_blocks.{i}.conv2"),
        _Rule(f"E.{n + 2}", "widen.0"),
        _Rule(f"E.{n + 4}", "widen.1"),
        _Rule(f"E.{n + 6}", "widen.2"),
        _Rule("mlp.0", "feature_mlp.fc1"),
        _Rule("mlp.2", "feature_mlp.fc2"),
        _Rule("compress.0", "degradation_proj"),
    )


def _kdsr_rules(role: str, size: str) -> tuple[_Rule, ...]:
    encoder = "E" if role == "t" else "E_st"  # the teacher's BlindSR calls it E, the student's E_st
    return (_Rule("G", "generator", _KDSR_GENERATOR),
            _Rule(encoder, "encoder", _kdsr_encoder(SIZES[size].n_resblocks)))


_RULES = {"cdsr": _top_rules(_CDSR_GENERATOR, _CDSR_ENCODER),
          "dasr": _top_rules(_DASR_GENERATOR, _DASR_ENCODER),
          **{kdsr_name(role, size): _kdsr_rules(role, size) for role in "ts" for size in SIZES}}

# MeanShift layers (DASR, KDSR): constants in the authors' files, non-persistent buffers in ours.
# DASR's are in 0..255 units, KDSR's in [0,1] (their rgb_range 1); the check allows 1e-3 grey
# levels either way.
_MEAN_SHIFT_ATOL = 1e-3 / 255


def authors_constants(model_name: str) -> dict[str, torch.Tensor]:
    """The authors' saved keys that hold constants we do not store (the MeanShift of DASR and
    KDSR), with their standard values (float32); empty for CDSR."""
    name = _authors_model(model_name)
    if name == "dasr":
        mean = div2k_mean_255()
    elif name.startswith("kdsr"):
        mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float32)
    else:
        return {}
    eye = torch.eye(3).view(3, 3, 1, 1)
    return {"G.sub_mean.weight": eye, "G.sub_mean.bias": -mean,
            "G.add_mean.weight": eye.clone(), "G.add_mean.bias": mean.clone()}


def _mean_shift_atol(model_name: str) -> float:
    return _MEAN_SHIFT_ATOL * (255 if model_name == "dasr" else 1)


def authors_model_names() -> list[str]:
    """The registry names whose authors' code exists (and so their checkpoint format)."""
    return sorted(_RULES)


def _authors_model(model_name: str) -> str:
    name = str(model_name).lower()
    if name not in _RULES:
        raise CheckpointError(f"the authors published no {model_name!r} checkpoints; their format "
                              f"exists for: {', '.join(sorted(_RULES))}")
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
    rules = _RULES[_authors_model(model_name)]
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
    ``E.queue_ptr``); KeyError for unknown keys and for the MeanShift constants of DASR and
    KDSR (see ``authors_constants``)."""
    return _map_key(key, model_name, "authors", "ours")


def map_our_key(key: str, model_name: str) -> str:
    """The authors' name for one of our keys; KeyError if there is none."""
    return _map_key(key, model_name, "ours", "authors")


def split_authors_state(state_dict: dict, model_name: str) -> tuple[dict, list[str]]:
    """(mapped state dict in our names, authors' keys that map to nothing); checks and drops
    the MeanShift constants (DASR, KDSR)."""
    name = _authors_model(model_name)
    constants = authors_constants(name)
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        if key in constants:
            expected = constants[key]
            if (tuple(value.shape) != tuple(expected.shape)
                    or not torch.allclose(value.detach().cpu().double(), expected.double(),
                                          rtol=0, atol=_mean_shift_atol(name))):
                units = "255*" if name == "dasr" else ""
                raise CheckpointError(f"{key} does not hold {name.upper()}'s MeanShift constant "
                                      f"(identity weight, bias -/+{units}{DIV2K_RGB_MEAN}), "
                                      "which this framework keeps fixed")
            continue
        try:
            mapped[map_authors_key(key, name)] = value
        except KeyError:
            unknown.append(key)
    return mapped, unknown


def authors_to_ours(state_dict: dict, model_name: str) -> dict:
    """Rename an authors' state dict to our keys (same tensors). MeanShift constants (DASR,
    KDSR) are checked and dropped. CheckpointError for keys that have no counterpart."""
    mapped, unknown = split_authors_state(state_dict, model_name)
    if unknown:
        raise CheckpointError(f"unknown {model_name.upper()} authors' key(s): {listing(unknown)}")
    return mapped


def ours_to_authors(state_dict: dict, model_name: str, *, keep_momentum: bool = False) -> dict:
    """Rename our state dict to the authors' keys, as their trainer saves it: without the key
    encoder and the queue unless ``keep_momentum``; MeanShift constants (DASR, KDSR) are added."""
    name = _authors_model(model_name)
    out = dict(authors_constants(name))
    for key, value in state_dict.items():
        if not keep_momentum and (key.startswith(KEY_ENCODER) or key in MOCO_STATE):
            continue
        try:
            out[map_our_key(key, name)] = value
        except KeyError as error:
            raise CheckpointError(error.args[0]) from None
    return out


def _square_root(n: int, what: str) -> int:
    if math.isqrt(n) ** 2 != n:
        raise CheckpointError(f"cannot infer the scale: {what} has {n} output channels")
    return math.isqrt(n)


def infer_authors_model(state_dict: dict) -> tuple[str, int]:
    """(model name, scale) of an authors' state dict, from its key names and upsampler shapes."""
    keys = state_dict.keys()
    try:
        if "E_st.E.0.weight" in state_dict or "E.E.0.weight" in state_dict:
            return _infer_kdsr(state_dict)
        if any(k.startswith("G.RRDB_trunk.") for k in keys):
            channels = state_dict["G.upsampler.0.weight"].shape[0]
            if channels % 3:
                raise CheckpointError(f"cannot infer the scale: G.upsampler.0 has {channels} "
                                      "output channels, not 3*s^2")
            return "cdsr", _square_root(channels // 3, "G.upsampler.0 (3*s^2)")
        if any(k.startswith("G.body.") for k in keys):
            return "dasr", _upsampler_scale(state_dict)
    except KeyError as missing:
        raise CheckpointError(f"authors' checkpoint lacks {missing.args[0]}; "
                              "cannot infer its scale") from None
    raise CheckpointError("authors' checkpoint is neither CDSR (G.RRDB_trunk.*), DASR "
                          "(G.body.*, E.encoder_q.*) nor KDSR (G.body.*, E.E.* or E_st.E.*)")


def _upsampler_scale(state_dict: dict) -> int:
    """The scale of the EDSR upsampler ``G.tail.0`` (DASR, KDSR): product over its stages."""
    n_feats = state_dict["G.head.0.weight"].shape[0]
    scale, stage = 1, 0
    while f"G.tail.0.{2 * stage}.weight" in state_dict:
        channels = state_dict[f"G.tail.0.{2 * stage}.weight"].shape[0]
        scale *= _square_root(channels // n_feats, f"G.tail.0.{2 * stage}")
        stage += 1
    if stage == 0:
        raise KeyError("G.tail.0.0.weight")
    return scale


def _count(state_dict: dict, pattern: str) -> int:
    """How many distinct indices ``pattern`` (a regex with one group) matches among the keys."""
    return len({m[1] for m in map(re.compile(pattern).fullmatch, state_dict) if m})


def _infer_kdsr(state_dict: dict) -> tuple[str, int]:
    role = "s" if "E_st.E.0.weight" in state_dict else "t"
    encoder = "E_st" if role == "s" else "E"
    scale = _upsampler_scale(state_dict)
    widths = (state_dict["G.head.0.weight"].shape[0],
              _count(state_dict, r"G\.body\.0\.body\.(\d+)\.conv1\.weight"),
              _count(state_dict, rf"{encoder}\.E\.(\d+)\.body\.0\.weight"))
    size = next((s for s, w in SIZES.items()
                 if (w.n_feats, w.n_blocks, w.n_resblocks) == widths), None)
    if size is None:
        published = ", ".join(f"{s.upper()} {(w.n_feats, w.n_blocks, w.n_resblocks)}"
                              for s, w in SIZES.items())
        raise CheckpointError(f"authors' KDSR checkpoint has (n_feats, n_blocks, n_resblocks) = "
                              f"{widths}, not a published size ({published})")
    in_channels = state_dict[f"{encoder}.E.0.weight"].shape[1]
    expected = KDSRTeacher.encoder_channels(scale) if role == "t" else 3
    if in_channels != expected:
        raise CheckpointError(f"authors' KDSR checkpoint: {encoder}.E.0 reads {in_channels} "
                              f"channels but a x{scale} {'teacher' if role == 't' else 'student'} "
                              f"encoder reads {expected}")
    return kdsr_name(role, size), scale


def authors_key_note(key: str, model_name: str) -> str:
    """``key`` (ours) followed by the authors' name for it, for error messages."""
    try:
        return f"{key} (authors' {map_our_key(key, model_name)})"
    except KeyError:
        return key
