"""Paper-size CDSR / DASR against the authors' eval forward (golden ``{name}_x{s}_*`` files).

Cases are discovered from ``{cdsr,dasr}_keys_x{s}.json`` (model and scale read from the json).
The saved keys are filled by the folder's ``fill.py`` and loaded through ``load_weights`` (the
authors'-format path, so the key map is covered too); then, for each file present:

* ``_out.npy``: float32 eval forward, ``max|d| <= 2e-5 max|ref|``;
* ``_embedding.npy`` and every vector of ``_debug.npz``: ``max|d| <= 2e-5`` (absolute);
* ``_out_f64.npy`` / ``_embedding_f64.npy``: the float64 model, ``max|d| <= 1e-9 max|ref|``.
"""
import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import model

from .common import GoldenResult, compare_abs, compare_rel_max, failure, load_golden_weights

KEYS_FILE = re.compile(r"(cdsr|dasr)_keys_x(\d+)\.json")
F32_OUT_RTOL = 2e-5      # max|d| <= rtol * max|ref|
F32_VECTOR_ATOL = 2e-5   # embedding and debug vectors
F64_RTOL = 1e-9


def model_cases(golden_dir: Path) -> list[tuple[str, int]]:
    """(model name, scale) of every ``{name}_keys_x{s}.json`` that has an ``_in.npy`` input."""
    cases = []
    for path in sorted(Path(golden_dir).glob("*_keys_x*.json")):
        match = KEYS_FILE.fullmatch(path.name)
        if match is None:
            continue
        info = json.loads(path.read_text())
        name, scale = info.get("model", match[1]), int(info.get("scale", match[2]))
        if (Path(golden_dir) / f"{name}_x{scale}_in.npy").is_file():
            cases.append((name, scale))
    return cases


@lru_cache(maxsize=None)
def golden_model(golden_dir: Path, name: str, scale: int) -> torch.nn.Module:
    """Paper-size model with the golden weights, in eval mode; shared: copy before changing it."""
    net = model.build_model(name, scale=scale)
    load_golden_weights(net, golden_dir, name, scale)
    return net.eval()


def golden_input(golden_dir: Path, name: str, scale: int) -> torch.Tensor:
    """(B,3,h,w) float32 model input in 0..255."""
    return torch.from_numpy(np.load(Path(golden_dir) / f"{name}_x{scale}_in.npy"))


def debug_points(net: torch.nn.Module, name: str) -> dict:
    """Our module behind each vector of the golden ``*_debug.npz``."""
    q = net.encoder.query_encoder
    if name == "cdsr":
        block0 = net.generator.blocks[0]
        return {"pixel_pooled": q.pixel_branch, "patch_pooled": q.patch_branch,
                "mlp1": q.fusion, "fc_q": q.codebook.query_proj, "proj_mlp": q.head,
                "compress": net.generator.embedding_mlp,
                "block0_sft_fc": block0.condition,  # sigmoid applied in the hook
                "block0_dqa1_attn": block0.dqa_block.adapt1.attention}
    return {"pooled": q.layers, "proj_mlp": q.head, "compress": net.generator.degradation_proj}


def debug_hooks(net: torch.nn.Module, name: str) -> tuple[dict, list]:
    """Capture our modules' outputs under the golden debug names; returns (captured, handles)."""
    captured = {}

    def keep(key):
        def hook(module, inputs, output):
            if key == "pooled":
                output = output.mean(dim=(2, 3))
            elif key == "block0_sft_fc":
                output = torch.sigmoid(output)
            elif key == "compress" and name == "dasr":
                output = torch.nn.functional.leaky_relu(output, 0.1)
            captured[key] = output.detach()
        return hook

    handles = [module.register_forward_hook(keep(key)) for key, module in debug_points(net, name).items()]
    return captured, handles


def check_model(golden_dir: Path, name: str, scale: int) -> list[GoldenResult]:
    """Every golden eval file of (name, scale) that exists."""
    golden_dir = Path(golden_dir)
    prefix = golden_dir / f"{name}_x{scale}"
    case = f"{name}_x{scale}"
    path = lambda suffix: Path(f"{prefix}{suffix}")  # noqa: E731
    net = golden_model(golden_dir, name, scale)
    x = golden_input(golden_dir, name, scale)
    results = []
    captured, handles = debug_hooks(net, name)
    try:
        with torch.no_grad():
            sr = net(x)
            embedding = net.embed(x)
    finally:
        for handle in handles:
            handle.remove()
    if path("_out.npy").is_file():
        results.append(compare_rel_max(f"{case}/out", sr, np.load(path("_out.npy")), F32_OUT_RTOL))
    if path("_embedding.npy").is_file():
        results.append(compare_abs(f"{case}/embedding", embedding, np.load(path("_embedding.npy")),
                                   F32_VECTOR_ATOL))
    if path("_debug.npz").is_file():
        debug = np.load(path("_debug.npz"))
        for key in debug.files:
            if key in captured:
                results.append(compare_abs(f"{case}/debug/{key}", captured[key], debug[key], F32_VECTOR_ATOL))
            else:
                results.append(failure(f"{case}/debug/{key}", "no matching module"))
    if path("_embedding_f64.npy").is_file() or path("_out_f64.npy").is_file():
        results += _check_float64(net, x, case, path)
    return results


def _check_float64(net: torch.nn.Module, x: torch.Tensor, case: str, path) -> list[GoldenResult]:
    net64, x64 = copy.deepcopy(net).double(), x.double()
    results = []
    with torch.no_grad():
        embedding = net64.embed(x64)
        if path("_embedding_f64.npy").is_file():
            results.append(compare_rel_max(f"{case}/embedding_f64", embedding,
                                           np.load(path("_embedding_f64.npy")), F64_RTOL))
        if path("_out_f64.npy").is_file():
            sr = net64.super_resolve(x64, embedding)
            results.append(compare_rel_max(f"{case}/out_f64", sr, np.load(path("_out_f64.npy")), F64_RTOL))
    return results


def check_model_goldens(golden_dir: Path) -> list[GoldenResult]:
    """``check_model`` for every discovered (name, scale)."""
    results = []
    for name, scale in model_cases(golden_dir):
        try:
            results += check_model(golden_dir, name, scale)
        except (KeyError, ValueError, RuntimeError, OSError) as error:
            results.append(failure(f"{name}_x{scale}", f"{type(error).__name__}: {error}"))
    return results
