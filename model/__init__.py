"""Model registry: ``build_model(name, **kwargs)`` for 'cdsr', 'dasr', CDSR's ablations
('cdsr-no-patch', ..., see ``model/variants.py``) and KDSR's teachers and students
('kdsr-t-m', 'kdsr-t-l', 'kdsr-s-m', 'kdsr-s-l', see ``model/kdsr.py``), and the
``make_model(args)`` factory. In model/ only three small builders read the command-line
options: ``make_model``, ``model.training.build_phases`` and ``model.evaluation.inference_policy``.

Names are matched ignoring case, hyphens, underscores and spaces ('KDSR-S-M', 'kdsr_s_m' and
'KDSRsM' are 'kdsr-s-m'); ``ALIASES`` adds the few short names ('kdsr-t' is the M teacher, the
authors' default size; 'blindsr', DASR's own name for its model, is DASR, so DASR's
``--model='blindsr'`` commands run unchanged). ``canonical_name`` resolves a spelling to its
registry name.
"""
import inspect
import re
from argparse import Namespace
from functools import partial
from typing import Callable

from torch import nn

from .base import BlindSRModel
from .cdsr import CDSR
from .dasr import DASR
from .kdsr import ROLES, SIZES, KDSRStudent, KDSRTeacher, kdsr_name
from .moco import MoCo
from .variants import ABLATIONS, BASE

_KDSR_CLASSES = {"t": KDSRTeacher, "s": KDSRStudent}
_MODELS: dict[str, Callable[..., BlindSRModel]] = {
    "cdsr": CDSR,
    "dasr": DASR,
    **{f"{BASE}-{ablation}": partial(CDSR, **spec.switches) for ablation, spec in ABLATIONS.items()},
    **{kdsr_name(role, size): partial(_KDSR_CLASSES[role], size=size)
       for role in ROLES for size in SIZES},
}
ALIASES = {"kdsr-t": "kdsr-t-m", "kdsr-s": "kdsr-s-m",
           "blindsr": "dasr"}            # DASR's code calls its model 'blindsr'

__all__ = ["CDSR", "DASR", "KDSRStudent", "KDSRTeacher", "MoCo", "BlindSRModel", "ALIASES",
           "build_model", "canonical_name", "input_requirement", "make_model", "model_names"]


def _squash(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


_SPELLINGS = {_squash(name): name for name in [*_MODELS, *ALIASES]}
assert len(_SPELLINGS) == len(_MODELS) + len(ALIASES), "two registry names differ only in separators"


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def canonical_name(name: str) -> str:
    """The registry name ``name`` spells (see the module docstring); ValueError listing the
    valid names for anything else."""
    found = _SPELLINGS.get(_squash(name)) if isinstance(name, str) else None
    if found is None:
        choices = ", ".join(model_names())
        aliases = ", ".join(f"{alias} = {target}" for alias, target in ALIASES.items())
        raise ValueError(f"unknown model {name!r}; choose one of: {choices} (aliases: {aliases}; "
                         "case, '-', '_' and spaces are ignored)")
    return ALIASES.get(found, found)


def input_requirement(name: str) -> tuple[int, str]:
    """(the smallest LR height and width model ``name``'s encoder reads, why), without building it."""
    factory = _MODELS[canonical_name(name)]
    if isinstance(factory, partial):
        return factory.func.input_requirement(**factory.keywords)
    return factory.input_requirement()


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name (any spelling ``canonical_name`` accepts) with its
    constructor's keywords.

    A variant's switches may be passed too (checkpoints record them) but must agree with the
    name: ``build_model('cdsr-no-patch', patch_branch=True)`` and
    ``build_model('kdsr-s-m', size='l')`` are errors."""
    key = canonical_name(name)
    model = _MODELS[key](**kwargs)
    if model.name != key:
        raise ValueError(f"the keywords {kwargs} build {model.name!r}, not {name!r}")
    return model


def make_model(args: Namespace) -> nn.Module:
    """The paper-size model for ``args.model`` (with ``args.ablation``, if set: the variant
    'cdsr-<ablation>') at ``args.scale``, with ``args.queue_size`` negatives in its MoCo queue
    if it has one (CDSR, DASR); reads nothing else."""
    name = f"{args.model}-{args.ablation}" if args.ablation else args.model
    factory = _MODELS[canonical_name(name)]
    kwargs = {"scale": int(args.scale)}
    if "queue_size" in inspect.signature(factory).parameters:
        kwargs["queue_size"] = args.queue_size
    return build_model(name, **kwargs)
