"""The authors' CDSR / DASR / KDSR code, imported from a user's checkout for side-by-side
benchmarks and golden vectors.

Their files are never modified or copied; the shims that let them run on a CPU with today's
libraries are installed at run time and labelled (``install_shims``).
"""
import argparse
import importlib
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import scipy
import torch
from torch import nn

CPU = torch.device("cpu")


class Checkout(NamedTuple):
    """Where one method's code lives in its authors' repository."""
    flag: str                   # the command-line flag that names the checkout
    repository: str
    model_module: str           # holds BlindSR
    degradation_module: str     # holds SRMDPreprocessing
    extra_modules: tuple = ()   # imported too: clashing packages their modules import, etc.


AUTHORS = {
    "cdsr": Checkout("--authors_cdsr", "github.com/ZhouYiiFeng/CDSR", "model.CDSR",
                     "utils.util_ma"),
    "dasr": Checkout("--authors_dasr", "github.com/LongguangWang/DASR", "model.blindsr",
                     "utils.util"),
    # The folder KDSR-classic of the repository. Its student (model_ST) and teacher (model_TA)
    # import their layers from its package ``model``, its degradations its ``utility``.
    "kdsr": Checkout("--authors_kdsr", "github.com/Zj-BinXia/KDSR (folder KDSR-classic)",
                     "model_ST.blindsr", "utils.util2",
                     ("model.common", "model_TA.blindsr", "utility")),
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
        checkout = AUTHORS[name]
        root = checkout_root(name, folder)
        names = [checkout.model_module, checkout.degradation_module, *checkout.extra_modules]
        install_shims()
        try:
            self.modules = import_isolated(root, names)
        except ImportError as error:
            raise AuthorsError(f"{checkout.flag} {folder}: importing the authors' code failed: "
                               f"{error}") from None
        self.name = name
        self.models = self.modules[checkout.model_module]
        self.degradations = self.modules[checkout.degradation_module]

    def build(self, scale: int, **options) -> nn.Module:
        """Their ``BlindSR`` at ``scale``; ``options`` are further fields of their ``args``
        (KDSR reads ``n_feats``, ``n_blocks``, ``n_resblocks`` and ``rgb_range``)."""
        return self.models.BlindSR(types.SimpleNamespace(scale=[scale], **options))

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


def checkout_root(name: str, folder: Optional[str]) -> Path:
    """The checkout folder of ``name``'s authors' code; AuthorsError (one line) if the flag is
    missing or the folder lacks their modules."""
    checkout = AUTHORS[name]
    if not folder:
        raise AuthorsError(f"{name.upper()} needs {checkout.flag} DIR, a checkout of "
                           f"{checkout.repository}")
    root = Path(folder).expanduser().resolve()
    names = [checkout.model_module, checkout.degradation_module, *checkout.extra_modules]
    files = [root / (name.replace(".", "/") + ".py") for name in names]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise AuthorsError(f"{checkout.flag} {folder}: {', '.join(missing)} not found (expected "
                           f"a checkout of {checkout.repository})")
    return root


@contextmanager
def checkout_on_path(root: Path, tops: Iterable[str]) -> Iterator[None]:
    """While active, importing a module whose top-level package is in ``tops`` loads the
    checkout's (``root`` first on ``sys.path``; ours of those names are set aside, even if
    loaded). On exit theirs leave ``sys.modules`` and ours come back; the loaded modules keep
    working."""
    tops = set(tops)
    ours = {k: m for k, m in sys.modules.items() if k.split(".")[0] in tops}
    for key in ours:
        del sys.modules[key]
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for key in [k for k in sys.modules if k.split(".")[0] in tops]:
            del sys.modules[key]
        sys.modules.update(ours)


def import_isolated(root: Path, names: Sequence[str]) -> Dict[str, types.ModuleType]:
    """Import ``names`` from ``root`` although packages of the same names are loaded already."""
    with checkout_on_path(root, {n.split(".")[0] for n in names}):
        return {n: importlib.import_module(n) for n in names}


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
