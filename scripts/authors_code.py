"""The authors' CDSR / DASR code, imported from a user's checkout for side-by-side benchmarks.

Their files are never modified or copied; the shims that let them run on a CPU with today's
libraries are installed at run time and labelled (``install_shims``).
"""
import argparse
import importlib
import sys
import types
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import scipy
import torch
from torch import nn

CPU = torch.device("cpu")
AUTHORS = {  # model -> (flag, module with BlindSR, degradation module, repository)
    "cdsr": ("--authors_cdsr", "model.CDSR", "utils.util_ma", "github.com/ZhouYiiFeng/CDSR"),
    "dasr": ("--authors_dasr", "model.blindsr", "utils.util", "github.com/LongguangWang/DASR"),
}


class AuthorsError(Exception):
    """The authors' code cannot be found or imported (one line for the user)."""


# ----------------------------------------------------------------------------- their code
class AuthorsCode:
    """The authors' model and degradation modules of one checkout, imported without touching
    their files. Their top-level packages (``model``, ``moco``, ``utils``) clash with ours, so
    they are imported with the checkout first on ``sys.path`` and then taken out of
    ``sys.modules`` again (the loaded modules keep working; ours are put back)."""

    def __init__(self, name: str, folder: Optional[str]):
        flag, model_module, degradation_module, repository = AUTHORS[name]
        if not folder:
            raise AuthorsError(f"{name.upper()} needs {flag} DIR, a checkout of {repository}")
        root = Path(folder).expanduser().resolve()
        wanted = [root / (m.replace(".", "/") + ".py") for m in (model_module, degradation_module)]
        missing = [str(p) for p in wanted if not p.is_file()]
        if missing:
            raise AuthorsError(f"{flag} {folder}: {', '.join(missing)} not found (expected a "
                               f"checkout of {repository})")
        install_shims()
        try:
            modules = import_isolated(root, [model_module, degradation_module])
        except ImportError as error:
            raise AuthorsError(f"{flag} {folder}: importing the authors' code failed: "
                               f"{error}") from None
        self.name = name
        self.models, self.degradations = modules[model_module], modules[degradation_module]

    def build(self, scale: int) -> nn.Module:
        return self.models.BlindSR(types.SimpleNamespace(scale=[scale]))

    def degradation(self, args: argparse.Namespace) -> Callable[[torch.Tensor], torch.Tensor]:
        """Their training degradation as their trainer builds and calls it: hr (B,2,3,H,W) -> lr."""
        util = self.degradations
        if self.name == "dasr":
            degrade = util.SRMDPreprocessing(
                args.scale, kernel_size=args.blur_kernel, blur_type=args.blur_type,
                sig_min=args.sig_min, sig_max=args.sig_max, lambda_min=args.lambda_min,
                lambda_max=args.lambda_max, noise=args.noise)
            return lambda hr: degrade(hr)[0]
        degrade = util.SRMDPreprocessing(
            scale=args.scale, random=True, sample_mode=args.sample_mode, sv_mode=args.sv_mode,
            kernel_size=args.blur_kernel, blur_type=args.blur_type, sig_min=args.sig_min,
            sig_max=args.sig_max, noise=args.noise, is_training=True,
            device=CPU)                                        # SHIM: their default is 'cuda'

        def call(hr: torch.Tensor) -> torch.Tensor:
            lr, lr_n, _ = degrade(hr)
            return lr_n if args.noise != 0 else lr
        return call


def import_isolated(root: Path, names: Sequence[str]) -> Dict[str, types.ModuleType]:
    """Import ``names`` from ``root`` although packages of the same names are loaded already."""
    tops = {n.split(".")[0] for n in names}
    ours = {k: m for k, m in sys.modules.items() if k.split(".")[0] in tops}
    for key in ours:
        del sys.modules[key]
    sys.path.insert(0, str(root))
    try:
        return {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(root))
        for key in [k for k in sys.modules if k.split(".")[0] in tops]:
            del sys.modules[key]
        sys.modules.update(ours)


def install_shims() -> None:
    """SHIMS for running the authors' unmodified files on a CPU with today's libraries.
    Our code never calls ``.cuda()`` (it is device-agnostic): the first two affect theirs only."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    if not hasattr(scipy, "finfo"):
        scipy.finfo = np.finfo
    try:
        import yaml  # noqa: F401
    except ImportError:
        stub = types.ModuleType("yaml")
        stub.Loader = stub.Dumper = object
        sys.modules["yaml"] = stub


# ----------------------------------------------------------------------------- measuring
