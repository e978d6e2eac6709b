"""Model registry: ``build_model(name, **kwargs)`` for 'cdsr', 'dasr' and CDSR's ablations
('cdsr-no-patch', ..., see ``model/variants.py``), and the ``make_model(args)`` factory (the
only place in model/ that reads ``args``)."""
from argparse import Namespace
from functools import partial
from typing import Callable

from torch import nn

from .cdsr import CDSR
from .dasr import DASR
from .base import BlindSRModel
from .moco import MoCo
from .names import canonical_name
from .variants import ABLATIONS, BASE

_MODELS: dict[str, Callable[..., BlindSRModel]] = {
    "cdsr": CDSR,
    "dasr": DASR,
    **{f"{BASE}-{ablation}": partial(CDSR, **spec.switches) for ablation, spec in ABLATIONS.items()},
}

__all__ = ["CDSR", "DASR", "MoCo", "BlindSRModel", "build_model", "make_model", "model_names"]


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name (any case, or an alias: ``model.names``) with its
    constructor's keywords.

    A variant's switches may be passed too (checkpoints record them) but must agree with the
    name: ``build_model('cdsr-no-patch', patch_branch=True)`` is an error."""
    try:
        key = canonical_name(name)
        factory = _MODELS[key]
    except (KeyError, AttributeError):
        choices = ", ".join(model_names())
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}") from None
    model = factory(**kwargs)
    if model.name != key:
        raise ValueError(f"the keywords {kwargs} build {model.name!r}, not {name!r}")
    return model


def make_model(args: Namespace) -> nn.Module:
    """The paper-size model for ``args.model`` (with ``args.ablation``, if set: the variant
    'cdsr-<ablation>') at ``args.scale`` with ``args.queue_size`` negatives in its MoCo queue;
    reads nothing else."""
    name = f"{args.model}-{args.ablation}" if args.ablation else args.model
    return build_model(name, scale=int(args.scale), queue_size=args.queue_size)
