"""Make the KDSR golden vectors (tests/golden_kdsr/) by running the authors' KDSR-classic code.

    python scripts/golden/kdsr.py --authors_kdsr KDSR_CLASSIC_DIR [--out tests/golden_kdsr]
        [--threads 2]

KDSR_CLASSIC_DIR is the folder KDSR-classic of a checkout of github.com/Zj-BinXia/KDSR (the
goldens were made at commit c7c9e81). Their files are imported from there, never copied, with
the shims of ``scripts/authors_code.py`` (``.cuda()`` a no-op) and their own ``--cpu True``.
Weights come from ``OUT/fill.py`` (our deterministic filler, a copy of shared/golden/fill.py)
over the keys their trainers save; their MeanShift keys keep the constants their constructor
builds. Inputs are crops of ``skimage.data.astronaut()`` (``fill.make_input``).

Written (all described, with shapes and units, in ``kdsr_index.json``; see README.md there):

* eval: ``BlindSR`` of their model_TA (teacher) and model_ST (student) in eval mode, on two
  16x16 LR images (and, for the teacher, their HR, as their stage-3 validation feeds it):
  output, the embedding fed to G and the pre-compress ``mlp`` features (``T_fea``/``S_fea``);
  M at x4 and x2, L at x4; plus each saved model's key listing;
* train: one call of their ``Trainer.train()`` (one batch of two 96x96 HR images) for the
  stage-3 teacher recipe, the stage-4 distillation recipe (iso) and the stage-4 encoder-only
  epochs of the anisotropic-noise recipe, their argument lines read from their .sh scripts;
  recorded: the LR their degradation drew, the losses, features, and slices of gradients and
  of the weights before and after their Adam step.
"""
import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.authors_code import (AuthorsError, checkout_on_path, checkout_root,  # noqa: E402
                                  install_shims)
from scripts.golden.kdsr_authors import (SCALE_OVERRIDES, THEIR_TOPS, fill_module,  # noqa: E402
                                         golden_state, keys_listing, their_args)
from scripts.golden.kdsr_steps import TRAIN_HR, TRAIN_STEPS, train_step  # noqa: E402

REPOSITORY = "github.com/Zj-BinXia/KDSR"
COMMIT = "c7c9e81"
SIZE_FLAGS = {"m": [], "l": ["--n_feats", "128", "--n_blocks", "28", "--n_resblocks", "5"]}
ROLE_MODULES = {"t": ("model_TA", "E"), "s": ("model_ST", "E_st")}
EVAL_CASES = [("t", "m", 4), ("s", "m", 4), ("t", "m", 2), ("s", "m", 2), ("t", "l", 4),
              ("s", "l", 4)]
EVAL_LR = (2, 3, 16, 16)


def eval_case(role: str, size: str, scale: int, fill: types.ModuleType, out: Path) -> dict:
    package, encoder_name = ROLE_MODULES[role]
    args = their_args(["--scale", scale, *SIZE_FLAGS[size]])
    torch.manual_seed(0)
    net = importlib.import_module(f"{package}.blindsr").BlindSR(args)
    state = golden_state(net, fill)
    net.load_state_dict(state, strict=True)
    net.eval()
    tag = f"kdsr_{role}_{size}_x{scale}"
    (out / f"kdsr_keys_{role}_{size}_x{scale}.json").write_text(keys_listing(
        net.state_dict(), role, size, scale, f"{package}/blindsr.py BlindSR(args).state_dict(), "
        "what their Model.save and trainers save"))
    lr255, hr255 = eval_inputs(fill, scale, out)
    lr = torch.from_numpy(lr255.astype(np.float32)) / 255
    hr = torch.from_numpy(hr255.astype(np.float32)) / 255
    captured = {}
    encoder = getattr(net, encoder_name)
    handle = encoder.register_forward_hook(lambda m, i, o: captured.update(fea=o[0], mlp=o[1][0]))
    with torch.no_grad():
        if role == "t":   # as their trainer_*_stage3.py test(): cat([lr_blur, PixelUnshuffle(hr)])
            degradation_input = torch.cat([lr, torch.nn.PixelUnshuffle(scale)(hr)], dim=1)
            sr = net(lr, degradation_input)
        else:
            sr = net(lr)
        handle.remove()
        sensitivity = float((net.G(lr, captured["fea"] * 1.1) - sr).abs().max() / sr.abs().max())
    arrays = {"out": sr.numpy(), "embedding": captured["fea"].numpy(),
              "kd_features": captured["mlp"].numpy()}
    np.savez(out / f"{tag}.npz", **arrays)
    return {"model": f"kdsr-{role}-{size}", "scale": scale, "file": f"{tag}.npz",
            "keys_file": f"kdsr_keys_{role}_{size}_x{scale}.json",
            "lr_file": f"kdsr_x{scale}_lr.npy", "hr_file": f"kdsr_x{scale}_hr.npy",
            "their_argv": ["--scale", str(scale), *SIZE_FLAGS[size]],
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
            "out_max_abs": float(np.abs(arrays["out"]).max()),
            "embedding_x1.1_changes_out_by_rel_max": sensitivity,
            "their_parameters": {"total": sum(p.numel() for p in net.parameters()),
                                 "G": sum(p.numel() for p in net.G.parameters()),
                                 "G_meanshift_frozen": 24,
                                 encoder_name: sum(p.numel() for p in encoder.parameters())}}


def eval_inputs(fill: types.ModuleType, scale: int, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) uint8 (B,3,h,w), (B,3,s*h,s*w): the same astronaut crops, the LR their s x s
    block means (``fill.make_input``); written once per scale."""
    b, c, h, w = EVAL_LR
    lr = fill.make_input(EVAL_LR, factor=scale).astype(np.uint8)
    hr = fill.make_input((b, c, h * scale, w * scale), factor=1).astype(np.uint8)
    np.save(out / f"kdsr_x{scale}_lr.npy", lr)
    np.save(out / f"kdsr_x{scale}_hr.npy", hr)
    return lr, hr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors_kdsr", required=True, metavar="DIR",
                        help="the KDSR-classic folder of a checkout of github.com/Zj-BinXia/KDSR")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "golden_kdsr",
                        help="golden folder (must hold fill.py)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        root = checkout_root("kdsr", opts.authors_kdsr)
    except AuthorsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not (opts.out / "fill.py").is_file():
        print(f"error: {opts.out}/fill.py not found (copy shared/golden/fill.py there)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(opts.threads)
    out = opts.out.resolve()
    fill = fill_module(out)
    install_shims()
    index = {"provenance": provenance(),
             "weights": {"fill": "fill.py fill_state_dict(shapes, scale_overrides) over every "
                                 "saved key (shapes from kdsr_keys_*.json)",
                         "scale_overrides": SCALE_OVERRIDES,
                         "meanshift": "G.sub_mean/G.add_mean keep their constructor's constants "
                                      "(rgb_range 1): weight identity, bias -/+ (0.4488, 0.4371, "
                                      "0.4040) in float32"},
             "eval": [], "train": {}}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch, checkout_on_path(root, THEIR_TOPS):
        os.chdir(scratch)                       # their modules write relative paths
        try:
            for role, size, scale in EVAL_CASES:
                index["eval"].append(eval_case(role, size, scale, fill, out))
                print(f"eval kdsr-{role}-{size} x{scale}", flush=True)
            hr255 = fill.make_input(TRAIN_HR, factor=1).astype(np.uint8)
            np.savez(out / "kdsr_train_batch.npz", hr=hr255)
            for name, script, trainer_module, role in TRAIN_STEPS:
                entry, arrays, saved = train_step(name, script, trainer_module, role, root, fill,
                                                  hr255, Path(scratch))
                listing = json.loads((out / f"kdsr_keys_{role}_m_x4.json").read_text())
                entry["saved_keys_equal_eval_listing"] = (
                    [[k, list(v.shape)] for k, v in saved.items()]
                    == [[k["key"], k["shape"]] for k in listing["keys"]])
                np.savez(out / entry["file"], **arrays)
                index["train"][name] = entry
                print(f"train {name}: {entry['losses']}", flush=True)
        finally:
            os.chdir(cwd)
    (out / "kdsr_index.json").write_text(json.dumps(index, indent=1))
    return 0


def provenance() -> dict:
    import scipy
    return {"repository": REPOSITORY, "folder": "KDSR-classic", "commit": COMMIT,
            "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "threads": torch.get_num_threads(), "device": "cpu", "dtype": "float32",
            "shims": ["Tensor.cuda and Module.cuda are no-ops (scripts/authors_code.py)",
                      "their own flags --cpu True --n_GPUs 1 for the training steps (their "
                      "option.py makes any --cpu value True; their Loss assumes DataParallel "
                      "whenever n_GPUs > 1, which --cpu never builds)",
                      "recording only: Tensor.backward, util2.SRMDPreprocessing.__call__, "
                      "util2.BatchBlur.forward and the trainer module's F.kl_div are wrapped to "
                      "keep copies of what passes through; forward hooks on E/E_st, G and "
                      "their L1 module"],
            "generator": "scripts/golden/kdsr.py"}


if __name__ == "__main__":
    sys.exit(main())
