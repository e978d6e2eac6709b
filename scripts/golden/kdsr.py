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
import contextlib
import importlib
import io
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import types
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.authors_code import (AuthorsError, checkout_on_path, checkout_root,  # noqa: E402
                                  install_shims)

REPOSITORY = "github.com/Zj-BinXia/KDSR"
COMMIT = "c7c9e81"
# Their top-level modules; ours of the same names are set aside while theirs run.
THEIR_TOPS = ("model", "model_TA", "model_ST", "utils", "utility", "utility2", "utility3", "loss",
              "data", "option", "template", "trainer_iso_stage3", "trainer_iso_stage4",
              "trainer_anisonoise_stage3", "trainer_anisonoise_stage4")
SIZE_FLAGS = {"m": [], "l": ["--n_feats", "128", "--n_blocks", "28", "--n_resblocks", "5"]}
ROLE_MODULES = {"t": ("model_TA", "E"), "s": ("model_ST", "E_st")}
EVAL_CASES = [("t", "m", 4), ("s", "m", 4), ("t", "m", 2), ("s", "m", 2), ("t", "l", 4),
              ("s", "l", 4)]
EVAL_LR = (2, 3, 16, 16)
TRAIN_HR = (2, 3, 96, 96)
TRAIN_SCALE = 4
# With fill.py's plain scales each of the 53 generator blocks more than doubles its input
# (outputs ~1e26); a trained network's residual branches are small, and so are these.
SCALE_OVERRIDES = [{"pattern": r"G\.body\.0\.body\.\d+\.conv1\.weight", "factor": 0.1}]
# Their own flags for one CPU (their Loss expects DataParallel whenever n_GPUs > 1).
CPU_FLAGS = ("--cpu", "True", "--n_GPUs", "1")
SLICE = 256  # leading elements (row-major) kept of each recorded weight or gradient
# (name, their script, trainer module, role trained)
TRAIN_STEPS = [
    ("stage3_iso", "main_iso_KDSRsMx4_stage3.sh", "trainer_iso_stage3", "t"),
    ("stage4_iso", "main_iso_KDSRsMx4_stage4.sh", "trainer_iso_stage4", "s"),
    ("stage4_anisonoise_encoder", "main_anisonoise_KDSRsMx4_stage4.sh",
     "trainer_anisonoise_stage4", "s"),
]


def recorded_keys(encoder: str, n_resblocks: int = 9, n_blocks: int = 53) -> list[str]:
    """Their keys whose slices the training goldens keep (M size)."""
    last = n_blocks - 1
    widen = [n_resblocks + 2, n_resblocks + 6]
    return ["G.sub_mean.bias", "G.head.0.weight", "G.head.0.bias",
            "G.body.0.body.0.da_conv1.kernel.0.weight", "G.body.0.body.0.da_conv1.kernel.2.weight",
            "G.body.0.body.0.conv1.weight", f"G.body.0.body.{last}.da_conv1.kernel.2.weight",
            f"G.body.0.body.{last}.conv1.bias", "G.body.1.weight", "G.tail.0.0.weight",
            "G.tail.0.2.bias", "G.tail.1.weight", "G.tail.1.bias",
            f"{encoder}.E.0.weight", f"{encoder}.E.0.bias", f"{encoder}.E.2.body.0.weight",
            f"{encoder}.E.{n_resblocks + 1}.body.2.bias", f"{encoder}.E.{widen[0]}.weight",
            f"{encoder}.E.{widen[1]}.weight", f"{encoder}.mlp.0.weight", f"{encoder}.mlp.2.bias",
            f"{encoder}.compress.0.weight", f"{encoder}.compress.0.bias"]


# ----------------------------------------------------------------------------- their pieces
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


def keys_listing(state: dict, role: str, size: str, scale: int, source: str) -> dict:
    keys = [{"key": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in state.items()]
    return {"model": f"kdsr-{role}-{size}", "scale": scale, "n_keys": len(keys),
            "n_values": int(sum(v.numel() for v in state.values())), "source": source,
            "keys": keys}


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


# ----------------------------------------------------------------------------- eval
def eval_case(role: str, size: str, scale: int, fill: types.ModuleType, out: Path) -> dict:
    package, encoder_name = ROLE_MODULES[role]
    args = their_args(["--scale", scale, *SIZE_FLAGS[size]])
    torch.manual_seed(0)
    net = importlib.import_module(f"{package}.blindsr").BlindSR(args)
    state = golden_state(net, fill)
    net.load_state_dict(state, strict=True)
    net.eval()
    tag = f"kdsr_{role}_{size}_x{scale}"
    (out / f"kdsr_keys_{role}_{size}_x{scale}.json").write_text(json.dumps(
        keys_listing(net.state_dict(), role, size, scale, f"{package}/blindsr.py BlindSR(args)"
                     ".state_dict(), what their Model.save / trainers save"), indent=1))
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


# ----------------------------------------------------------------------------- training
class _Checkpoint:
    """What their trainers use of ``utility.checkpoint``: ``dir`` (model/ and optimzer/ in a
    scratch folder), ``log``, ``write_log``."""

    def __init__(self, folder: Path):
        self.dir = str(folder)
        self.log = torch.Tensor()
        for sub in ("model", "optimzer"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def write_log(self, text: str, refresh: bool = False) -> None:
        print(text)

    def add_log(self, log: torch.Tensor) -> None:
        self.log = torch.cat([self.log, log])


def train_step(name: str, script: str, trainer_module: str, role: str, root: Path,
               fill: types.ModuleType, hr255: np.ndarray,
               scratch: Path) -> tuple[dict, dict, dict]:
    """One ``Trainer.train()`` of theirs on the golden batch, as their main_*.py sets it up
    (the data loader replaced by the one golden batch); returns (index entry, arrays, the
    state dict their trainer saved)."""
    recipe = recipe_argv(root / script)
    teacher_file = scratch / "teacher.pt"
    pre_train = ["--pre_train_TA", "--pre_train_ST"] if role == "s" else ["--pre_train_TA"]
    args = their_args([*recipe, *CPU_FLAGS, *(f"{flag}={teacher_file}" for flag in pre_train)])
    # The teacher's golden weights, where their --pre_train_TA (and --pre_train_ST) read them.
    teacher_state = golden_state(importlib.import_module("model_TA.blindsr").BlindSR(args), fill)
    torch.save(teacher_state, teacher_file)
    torch.manual_seed(args.seed)                                       # as their main_*.py
    ckp = _Checkpoint(scratch / name)
    hr = torch.stack([importlib.import_module("data.common").np2Tensor(img.transpose(1, 2, 0),
                                                                        rgb_range=args.rgb_range)
                      for img in hr255])                               # as their loader
    loader = types.SimpleNamespace(loader_train=[(hr, ["golden"])], loader_test=[])
    teacher = importlib.import_module("model_TA").Model(args, ckp)     # loads --pre_train_TA
    if role == "t":
        loss = importlib.import_module("loss").Loss(args, ckp)
        trainer = importlib.import_module(trainer_module).Trainer(args, loader, teacher, loss, ckp)
        trained, encoder_name = teacher.get_model(), "E"
    else:
        student = importlib.import_module("model_ST").Model(args, ckp)  # the teacher's G (strict=False)
        student_state = golden_state(student.get_model(), fill)
        for key in student_state:                   # their G = the teacher's, by fill's design
            if key in teacher_state:
                assert torch.equal(student_state[key], teacher_state[key]), key
        student.get_model().load_state_dict(student_state, strict=True)  # E_st: fill.py
        loss = importlib.import_module("loss").Loss(args, ckp)
        trainer = importlib.import_module(trainer_module).Trainer(args, loader, student, teacher,
                                                                   loss, ckp)
        trained, encoder_name = student.get_model(), "E_st"
    keys = recorded_keys(encoder_name)
    named = dict(trained.named_parameters())
    arrays = {f"init__{k}": leading(trained.state_dict()[k]) for k in keys}
    record = run_recorded(trainer, trainer_module, teacher.get_model(), trained, role)
    arrays.update(record.pop("arrays"))
    for key in keys:
        arrays[f"post__{key}"] = leading(trained.state_dict()[key])
        grad = named[key].grad if key in named else None
        if grad is not None:
            arrays[f"grad__{key}"] = leading(grad)
    arrays["post__teacher__E.mlp.2.bias"] = leading(teacher.get_model().state_dict()["E.mlp.2.bias"])
    saved = torch.load(Path(ckp.dir) / "model" / ("model_TA_last.pt" if role == "t"
                                                   else "model_ST_last.pt"), map_location="cpu")
    entry = {"file": f"kdsr_train_{name}.npz", "their_script": script,
             "their_trainer": f"{trainer_module}.py Trainer.train() (one epoch, one batch)",
             "their_argv": [*recipe, *CPU_FLAGS,
                            *(f"{flag}=<the golden teacher>" for flag in pre_train)],
             "trains": "teacher" if role == "t" else "student",
             "saved_file_keys": len(saved), "saved_keys_equal_eval_listing": None,
             "grad_keys": sorted(k for k in keys if f"grad__{k}" in arrays),
             "no_grad_keys": sorted(k for k in keys if f"grad__{k}" not in arrays),
             "recorded_keys": keys}
    entry.update(record)
    return entry, arrays, saved


def run_recorded(trainer, trainer_module: str, teacher: torch.nn.Module, trained: torch.nn.Module,
                 role: str) -> dict:
    """``trainer.train()`` with recording shims: the loss given to backward, the L1 and KL
    terms, the degradation's LR and kernel, the encoders' features and the SR."""
    util2 = importlib.import_module("utils.util2")
    module = importlib.import_module(trainer_module)
    seen: dict = {"kl": []}

    def on_backward(original):
        def backward(self, *a, **k):
            seen["total"] = self.detach().clone()
            return original(self, *a, **k)
        return backward

    def on_degrade(original):
        def call(self, hr, random=True):
            lr, hr_blur = original(self, hr, random)
            seen["lr"] = lr.clone()
            return lr, hr_blur
        return call

    def on_blur(original):
        def forward(self, x, kernel):
            seen["kernel"] = kernel.detach().clone()
            return original(self, x, kernel)
        return forward

    functional = types.SimpleNamespace(**{k: getattr(module.F, k) for k in dir(module.F)
                                          if not k.startswith("__")})

    def kl_div(*a, **k):
        value = torch.nn.functional.kl_div(*a, **k)
        seen["kl"].append(value.detach().clone())
        return value
    functional.kl_div = kl_div
    hooks = [teacher.E.register_forward_hook(lambda m, i, o: seen.update(t_emb=o[0], t_fea=o[1][0])),
             trained.G.register_forward_hook(lambda m, i, o: seen.update(sr=o.detach().clone()))]
    if role == "s":
        hooks.append(trained.E_st.register_forward_hook(
            lambda m, i, o: seen.update(s_emb=o[0], s_fea=o[1][0])))
    l1_module = trainer.loss1 if role == "t" else trainer.loss
    hooks.append(l1_module.register_forward_hook(lambda m, i, o: seen.update(l1=o.detach().clone())))
    log = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(torch.Tensor, "backward", on_backward))
        stack.enter_context(patched(util2.SRMDPreprocessing, "__call__", on_degrade))
        stack.enter_context(patched(util2.BatchBlur, "forward", on_blur))
        stack.enter_context(patched(module, "F", lambda original: functional))
        stack.enter_context(contextlib.redirect_stdout(log))
        trainer.train()
    for hook in hooks:
        hook.remove()
    lr = seen["lr"]
    lr255 = (lr * 255).round()
    assert torch.equal(lr, lr255 / 255), "their LR is not k/255"   # so uint8 stores it exactly
    arrays = {"lr": lr255.to(torch.uint8).numpy(), "kernel": seen["kernel"][0].numpy(),
              "loss_total": seen["total"].numpy(), "teacher_kd_features": seen["t_fea"].detach().numpy(),
              "teacher_embedding": seen["t_emb"].detach().numpy()}
    if "l1" in seen:
        arrays["loss_l1"] = seen["l1"].numpy()
        arrays["sr_slice"] = seen["sr"][:, :, :16, :16].numpy()
    if seen["kl"]:
        arrays["loss_kd"] = seen["kl"][0].numpy()
    if role == "s":
        arrays["student_kd_features"] = seen["s_fea"].detach().numpy()
        arrays["student_embedding"] = seen["s_emb"].detach().numpy()
    group = trainer.optimizer.param_groups[0]
    return {"arrays": arrays, "epoch": trainer.scheduler.last_epoch + 1,
            "learning_rate": group["lr"],
            "optimizer": {"type": type(trainer.optimizer).__name__, "betas": list(group["betas"]),
                          "eps": group["eps"], "weight_decay": group["weight_decay"],
                          "n_parameters": sum(p.numel() for g in trainer.optimizer.param_groups
                                              for p in g["params"])},
            "losses": {k: float(v) for k, v in arrays.items() if k.startswith("loss_")}}


# ----------------------------------------------------------------------------- main
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
