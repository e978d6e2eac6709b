"""Paper-size CDSR and DASR against the authors' eval forward (../shared/golden, see its README).

The authors' saved keys are filled deterministically by the golden ``fill.py`` and loaded through
``load_weights`` (the authors'-format path), so these tests also cover the key map.
"""
import copy
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model.checkpoint import load_weights

CASES = [(name, scale) for name in ("cdsr", "dasr") for scale in (2, 4)]
F32_OUT_RTOL = 2e-5      # max|d| <= rtol * max|ref|
F32_VECTOR_ATOL = 2e-5   # embedding and debug vectors
F64_RTOL = 1e-9



@lru_cache(maxsize=None)
def _fill_module(golden_dir: Path):
    spec = importlib.util.spec_from_file_location("golden_fill", golden_dir / "fill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def authors_state(golden_dir: Path, name: str, scale: int) -> dict:
    """The authors' saved keys for (name, scale), filled as the golden data was."""
    fill = _fill_module(golden_dir)
    keys = json.loads((golden_dir / f"{name}_keys_x{scale}.json").read_text())["keys"]
    overrides = fill.DASR_SCALE_OVERRIDES if name == "dasr" else None
    return fill.fill_state_dict({k["key"]: tuple(k["shape"]) for k in keys}, overrides)


@lru_cache(maxsize=None)
def golden_model(golden_dir: Path, name: str, scale: int) -> torch.nn.Module:
    """Paper-size model with the golden weights, in eval mode; shared: copy before changing it."""
    net = model.build_model(name, scale=scale)
    assert load_weights(net, authors_state(golden_dir, name, scale)) == "authors"
    return net.eval()


def golden_input(golden_dir: Path, name: str, scale: int) -> torch.Tensor:
    return torch.from_numpy(np.load(golden_dir / f"{name}_x{scale}_in.npy"))


def max_error(actual: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(actual.detach().numpy() - reference).max())


def debug_hooks(net: torch.nn.Module, name: str) -> tuple[dict, list]:
    """Capture our modules' outputs under the names of the golden ``*_debug.npz`` vectors."""
    captured = {}
    q = net.encoder.query_encoder
    if name == "cdsr":
        block0 = net.generator.blocks[0]
        points = {"pixel_pooled": q.pixel_branch, "patch_pooled": q.patch_branch,
                  "mlp1": q.fusion, "fc_q": q.codebook.query_proj, "proj_mlp": q.head,
                  "compress": net.generator.embedding_mlp,
                  "block0_sft_fc": block0.condition,  # sigmoid applied below
                  "block0_dqa1_attn": block0.dqa_block.adapt1.attention}
    else:
        points = {"pooled": q.layers, "proj_mlp": q.head,
                  "compress": net.generator.degradation_proj}

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

    handles = [module.register_forward_hook(keep(key)) for key, module in points.items()]
    return captured, handles


@pytest.mark.parametrize("name,scale", CASES)
def test_float32_forward_matches_the_authors(golden_dir, name, scale):
    net = golden_model(golden_dir, name, scale)
    x = golden_input(golden_dir, name, scale)
    captured, handles = debug_hooks(net, name)
    with torch.no_grad():
        sr = net(x)
        embedding = net.embed(x)
    for handle in handles:
        handle.remove()
    out_ref = np.load(golden_dir / f"{name}_x{scale}_out.npy")
    assert sr.shape == out_ref.shape == (1, 3, 24 * scale, 24 * scale)
    assert max_error(sr, out_ref) <= F32_OUT_RTOL * np.abs(out_ref).max()
    emb_ref = np.load(golden_dir / f"{name}_x{scale}_embedding.npy")
    assert max_error(embedding, emb_ref) <= F32_VECTOR_ATOL
    debug = np.load(golden_dir / f"{name}_x{scale}_debug.npz")
    assert set(captured) == set(debug.files)
    for key in debug.files:
        assert max_error(captured[key], debug[key]) <= F32_VECTOR_ATOL, key


@pytest.mark.parametrize("name,scale", CASES)
def test_float64_forward_matches_the_authors(golden_dir, name, scale):
    net = copy.deepcopy(golden_model(golden_dir, name, scale)).double()
    x = golden_input(golden_dir, name, scale).double()
    with torch.no_grad():
        embedding = net.embed(x)
        emb_ref = np.load(golden_dir / f"{name}_x{scale}_embedding_f64.npy")
        assert max_error(embedding, emb_ref) <= F64_RTOL * np.abs(emb_ref).max()
        out_path = golden_dir / f"{name}_x{scale}_out_f64.npy"
        if out_path.exists():  # x2 only
            out_ref = np.load(out_path)
            sr = net.super_resolve(x, embedding)
            assert max_error(sr, out_ref) <= F64_RTOL * np.abs(out_ref).max()


@pytest.mark.parametrize("name,scale", CASES)
def test_parameter_counts_match_the_authors(golden_dir, name, scale):
    facts = json.loads((golden_dir / "facts.json").read_text())[name][f"x{scale}"]
    net = golden_model(golden_dir, name, scale)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # Our DASR MeanShift is a buffer, not a parameter: compare with the trainable count.
    assert count(net.generator) == facts["params_G_trainable"]
    assert count(net.encoder.query_encoder) == facts["params_E_encoder_q"]
    assert count(net.encoder.key_encoder) == facts["params_E_encoder_k"]
    assert net.encoder.queue.shape == tuple(facts["buffer_E_queue_shape"])
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == facts["params_G_trainable"] + facts["params_E_encoder_q"]


@pytest.mark.parametrize("name", ["cdsr", "dasr"])
def test_paper_size_x3_and_non_square_inputs(golden_dir, name):
    net = model.build_model(name, scale=3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 12, 16) * 255).shape == (1, 3, 36, 48)
    net = golden_model(golden_dir, name, 2)
    x = golden_input(golden_dir, name, 2)
    sizes = [(24, 36), (30, 26)] if name == "cdsr" else [(24, 36), (17, 11)]
    for h, w in sizes:
        lr = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear").round()
        with torch.no_grad():
            sr = net(lr)
        assert sr.shape == (1, 3, 2 * h, 2 * w) and torch.isfinite(sr).all()
