"""Running the authors' KDSR-classic code for the golden vectors (``scripts/golden/kdsr.py``):
their top-level modules, their option parser and recipes, the golden weights in their keys.
Use inside ``scripts.authors_code.checkout_on_path(root, THEIR_TOPS)``."""
import argparse
import contextlib
import importlib
import json
import re
import shlex
import sys
import types
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

# Their top-level modules; ours of the same names are set aside while theirs run.
THEIR_TOPS = ("model", "model_TA", "model_ST", "utils", "utility", "utility2", "utility3", "loss",
              "data", "option", "template", "trainer_iso_stage3", "trainer_iso_stage4",
              "trainer_anisonoise_stage3", "trainer_anisonoise_stage4")
# With fill.py's plain scales each of the 53 generator blocks more than doubles its input
# (outputs ~1e26); a trained network's residual branches are small, and so are these.
SCALE_OVERRIDES = [{"pattern": r"G\.body\.0\.body\.\d+\.conv1\.weight", "factor": 0.1}]
SLICE = 256  # leading elements (row-major) kept of each recorded weight or gradient


def fill_module(folder: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("golden_fill", folder / "fill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def their_args(argv: Sequence[str]) -> argparse.Namespace:
    """Their ``option.args`` for a command line (their option.py parses sys.argv on import)."""
    for name in ("option", "template"):
        sys.modules.pop(name, None)
    saved = sys.argv
    sys.argv = ["option.py", *map(str, argv)]
    try:
        return importlib.import_module("option").args
    finally:
        sys.argv = saved


def recipe_argv(script: Path) -> list[str]:
    """The arguments of the python command in one of their .sh files, without --dir_data and
    the --pre_train_* paths (replaced by the golden weights)."""
    words = shlex.split(script.read_text().replace("\\\n", " "), comments=True)
    start = next(i for i, w in enumerate(words) if w.endswith(".py")) + 1
    dropped = ("--dir_data", "--pre_train_TA", "--pre_train_ST")
    return [w for w in words[start:] if not w.startswith(dropped)]


def scale_overrides(keys: Sequence[str]) -> dict[str, float]:
    """fill.py's ``scale_overrides`` for these keys (``SCALE_OVERRIDES``)."""
    return {key: rule["factor"] for key in keys for rule in SCALE_OVERRIDES
            if re.fullmatch(rule["pattern"], key)}


def golden_state(net: torch.nn.Module, fill: types.ModuleType) -> dict:
    """fill.py over every key of ``net`` (their saved keys) with ``SCALE_OVERRIDES``, except
    the MeanShift constants, which keep the values their constructor built."""
    own = net.state_dict()
    filled = fill.fill_state_dict({k: tuple(v.shape) for k, v in own.items()},
                                  scale_overrides(list(own)))
    for key in own:
        if "sub_mean" in key or "add_mean" in key:
            filled[key] = own[key].detach().clone()
    return filled


def keys_listing(state: dict, role: str, size: str, scale: int, source: str) -> str:
    """The JSON text of a saved model's keys (key, shape, dtype; one key a line)."""
    head = {"model": f"kdsr-{role}-{size}", "scale": scale, "n_keys": len(state),
            "n_values": int(sum(v.numel() for v in state.values())), "source": source}
    keys = [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in state.items()]
    fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    return ("{\n" + ",\n".join(fields) + ',\n "keys": [\n'
            + ",\n".join(f"  {json.dumps(k)}" for k in keys) + "\n ]\n}\n")


def leading(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1)[:SLICE].numpy().copy()


@contextlib.contextmanager
def patched(owner: object, name: str, wrap: Callable) -> Iterator[None]:
    """Temporarily replace ``owner.name`` by ``wrap(original)`` (a recording shim)."""
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)
