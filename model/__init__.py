"""Model registry: ``build_model('cdsr' | 'dasr', **kwargs)`` and the ``make_model(args)``
factory (the only place in model/ that reads ``args``)."""
from argparse import Namespace

from torch import nn

from .cdsr import CDSR
from .dasr import DASR
from .base import BlindSRModel
from .moco import MoCo

_MODELS: dict[str, type[BlindSRModel]] = {"cdsr": CDSR, "dasr": DASR}

__all__ = ["CDSR", "DASR", "MoCo", "BlindSRModel", "build_model", "make_model", "model_names"]


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by (case-insensitive) name with its constructor's keywords."""
    try:
        cls = _MODELS[name.lower()]
    except (KeyError, AttributeError):
        choices = ", ".join(model_names())
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}") from None
    return cls(**kwargs)


def make_model(args: Namespace) -> nn.Module:
    """The paper-size model for ``args.model`` at ``args.scale`` with ``args.queue_size``
    negatives in its MoCo queue; reads nothing else."""
    return build_model(args.model, scale=int(args.scale), queue_size=args.queue_size)
