"""One training step of each of the authors' KDSR stages, run through their own
``Trainer.train()`` with recording shims (for ``scripts/golden/kdsr.py``; use inside
``checkout_on_path(root, THEIR_TOPS)``)."""
import contextlib
import importlib
import io
import types
from pathlib import Path

import numpy as np
import torch

from .kdsr_authors import golden_state, leading, patched, recipe_argv, their_args

# Their own flags for one CPU (their Loss expects DataParallel whenever n_GPUs > 1).
CPU_FLAGS = ("--cpu", "True", "--n_GPUs", "1")
TRAIN_HR = (2, 3, 96, 96)
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
