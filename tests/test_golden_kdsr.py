"""KDSR against the authors' KDSR-classic code (tests/golden_kdsr, see its README).

The eval comparisons live in ``scripts/golden/kdsr_models.py`` (shared with
``scripts/verify_golden.py``); the golden weights go through ``load_weights``'s authors' path,
so these tests also cover the key map. The authors' format round trip and one training step
of each of their stages are checked here twice: written out (model, L1 + distillation loss and
Adam called directly) and through our trainer (``scripts/golden/kdsr_train.py``: the phases,
``begin_phase``, ``set_trainable``, ``make_optimizer``, ``training_step`` and the criterion
``loss.make_loss`` builds for a KDSR run; shared with ``scripts/verify_golden.py``).
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from loss.distillation import distillation_kl
from model.authors_format import authors_to_ours, infer_authors_model, map_authors_key
from model.checkpoint import CheckpointError, load_model, load_weights, ours_to_authors
from scripts.golden import kdsr_models, kdsr_train
from scripts.golden.kdsr_models import authors_state, check_case, check_kdsr_goldens, golden_model

GOLDEN = Path(__file__).resolve().parent / "golden_kdsr"
INDEX = json.loads((GOLDEN / "kdsr_index.json").read_text())
CASES = {f"{c['model']}_x{c['scale']}": c for c in INDEX["eval"]}


def _report(results) -> str:
    return "\n".join(f"{r.name}: {r.max_error:g} {r.unit} > {r.tolerance:g}"
                     for r in results if not r.passed)


def test_the_index_holds_every_model_and_scale_the_task_asks_for():
    assert sorted(CASES) == sorted(["kdsr-t-m_x4", "kdsr-s-m_x4", "kdsr-t-m_x2", "kdsr-s-m_x2",
                                    "kdsr-t-l_x4", "kdsr-s-l_x4"])
    assert sorted(INDEX["train"]) == ["stage3_iso", "stage4_anisonoise_encoder", "stage4_iso"]
    assert INDEX["provenance"]["commit"] == "c7c9e81"


@pytest.mark.parametrize("case", sorted(CASES))
def test_eval_forward_and_features_match_the_authors(case):
    results = check_case(GOLDEN, CASES[case])
    assert [r.name for r in results] == [f"{case}/out", f"{case}/embedding", f"{case}/kd_features"]
    assert all(r.passed for r in results), _report(results)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_goldens_can_tell_a_wrong_embedding(case):
    """The check can fail: scaling the embedding by 1.1 moves the authors' output by far more
    than the tolerance (recorded by the generator), and so it moves ours."""
    assert CASES[case]["embedding_x1.1_changes_out_by_rel_max"] > 1000 * kdsr_models.F32_OUT_RTOL
    net = golden_model(GOLDEN, CASES[case]["model"], CASES[case]["scale"])
    lr, hr = kdsr_models.golden_images(GOLDEN, CASES[case])
    with torch.no_grad():
        embedding = net.embed(lr, *((hr,) if net.needs_hr else ()))
        sr = net.super_resolve(lr, embedding * 1.1) / 255
    ref = np.load(GOLDEN / CASES[case]["file"])["out"]
    assert np.abs(sr.numpy() - ref).max() > 1000 * kdsr_models.F32_OUT_RTOL * np.abs(ref).max()


def test_a_corrupted_golden_fails(tmp_path):
    for path in GOLDEN.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    case = CASES["kdsr-s-m_x2"]
    arrays = dict(np.load(GOLDEN / case["file"]))
    arrays["kd_features"][1, 7] += 1e-4
    np.savez(tmp_path / case["file"], **arrays)
    failed = [r.name for r in check_kdsr_goldens(tmp_path) if not r.passed]
    assert failed == ["kdsr-s-m_x2/kd_features"]


def test_the_distillation_loss_matches_the_authors():
    result = kdsr_models.check_kd_loss(GOLDEN)
    assert result.passed, _report([result])


def test_fill_py_is_the_shared_golden_one(golden_dir):
    assert (GOLDEN / "fill.py").read_bytes() == (golden_dir / "fill.py").read_bytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_counts_match_the_authors(case):
    theirs = CASES[case]["their_parameters"]
    net = golden_model(GOLDEN, CASES[case]["model"], CASES[case]["scale"])
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    encoder = theirs["E"] if "E" in theirs else theirs["E_st"]
    assert count(net.generator) == theirs["G"] - theirs["G_meanshift_frozen"]  # ours: a buffer
    assert count(net.encoder) == encoder
    assert count(net) == theirs["total"] - theirs["G_meanshift_frozen"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_authors_format_round_trip(case, tmp_path):
    name, scale = CASES[case]["model"], CASES[case]["scale"]
    listing = json.loads((GOLDEN / CASES[case]["keys_file"]).read_text())["keys"]
    theirs = authors_state(GOLDEN, name, scale)
    assert infer_authors_model(theirs) == (name, scale)
    net = golden_model(GOLDEN, name, scale)
    back = ours_to_authors(net.state_dict(), name)
    assert [[k, list(v.shape), str(v.dtype)[6:]] for k, v in back.items()] == \
        [[k["key"], k["shape"], k["dtype"]] for k in listing]
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)
    assert authors_to_ours(back, name).keys() == net.state_dict().keys()
    path = tmp_path / f"{name}.pt"           # as their trainers save it: a plain state dict
    torch.save(back, path)
    loaded = load_model(path)
    assert (loaded.name, loaded.scale, loaded.training) == (name, scale, False)


def test_the_wrong_role_size_or_meanshift_is_refused():
    teacher = authors_state(GOLDEN, "kdsr-t-m", 4)
    with pytest.raises(CheckpointError, match="is for KDSR-T-M x4 but the model is KDSR-S-M x4"):
        load_weights(model.build_model("kdsr-s-m", scale=4), teacher)
    shifted = dict(teacher, **{"G.add_mean.bias": teacher["G.add_mean.bias"] * 255})
    with pytest.raises(CheckpointError, match=r"G.add_mean.bias does not hold KDSR-T-M's MeanShift"):
        load_weights(model.build_model("kdsr-t-m", scale=4), shifted)
    cut = {k: v for k, v in teacher.items() if ".body.52." not in k}
    with pytest.raises(CheckpointError, match=r"\(n_feats, n_blocks, n_resblocks\) = \(64, 52, 9\), "
                                             r"not a published size"):
        infer_authors_model(cut)


def test_convert_checkpoint_takes_kdsr_both_ways(tmp_path):
    from scripts import convert_checkpoint
    theirs = authors_state(GOLDEN, "kdsr-s-m", 4)
    torch.save(theirs, tmp_path / "KDSRsM_iso_x4.pt")                # their published file name
    parser = convert_checkpoint.build_parser()
    convert_checkpoint.convert(parser.parse_args([str(tmp_path / "KDSRsM_iso_x4.pt"),
                                                  str(tmp_path / "ours.pt"), "--to", "ours",
                                                  "--model", "kdsr-s-m"]))
    convert_checkpoint.convert(parser.parse_args([str(tmp_path / "ours.pt"),
                                                  str(tmp_path / "back.pt"), "--to", "authors"]))
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == list(theirs) and all(torch.equal(back[k], theirs[k]) for k in theirs)


# ----------------------------------------------------------------------------- training steps
def _our_key(key: str, name: str) -> str:
    return map_authors_key(key, name)


def _post_step_ok(ours: np.ndarray, ref: np.ndarray, lr: float) -> tuple[bool, float]:
    """Every element |d| <= 2 lr + 1e-6|ref|, all but 0.5% <= 0.05 lr + 1e-6|ref| (a weight whose
    true gradient is float32 noise moves by a random +-lr at Adam's first step), as in
    shared/golden/train."""
    d = np.abs(ours.astype(np.float64) - ref) - 1e-6 * np.abs(ref)
    bulk = np.sort(d)[len(d) - 1 - math.floor(0.005 * d.size)] if d.size else 0.0
    return bool(d.max(initial=0) <= 2 * lr and bulk <= 0.05 * lr), float(bulk / lr)


@pytest.mark.parametrize("step_name", ["stage3_iso", "stage4_iso", "stage4_anisonoise_encoder"])
def test_one_training_step_matches_the_authors(step_name):
    """Their Trainer.train() on one batch against ours written out: the teacher stage is L1 in
    [0,1] units (their rgb_range 1) on the teacher's SR; the distillation stage is L1 (unless in
    their encoder-only epochs) + distillation_kl(student kd_features, teacher's, T=0.15), the
    teacher frozen; Adam over every trainable parameter of the trained model."""
    step = INDEX["train"][step_name]
    arrays = np.load(GOLDEN / step["file"])
    hr = torch.from_numpy(np.load(GOLDEN / "kdsr_train_batch.npz")["hr"].astype(np.float32))
    lr = torch.from_numpy(arrays["lr"].astype(np.float32))
    teacher = copy.deepcopy(golden_model(GOLDEN, "kdsr-t-m", 4)).train()
    trained_name = "kdsr-t-m" if step["trains"] == "teacher" else "kdsr-s-m"
    trained = teacher if step["trains"] == "teacher" else \
        copy.deepcopy(golden_model(GOLDEN, "kdsr-s-m", 4)).train()
    opt = step["optimizer"]
    optimizer = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad],
                                 lr=step["learning_rate"], betas=tuple(opt["betas"]),
                                 eps=opt["eps"], weight_decay=opt["weight_decay"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == opt["n_parameters"]
    losses = {}
    if step["trains"] == "teacher":
        sr = trained(lr, hr)
        losses["loss_l1"] = F.l1_loss(sr / 255, hr / 255)
        total = losses["loss_l1"]
    else:
        with torch.no_grad():
            t_emb, t_fea = teacher.encode(lr, hr)
        out = trained(lr, features=True, with_sr="loss_l1" in arrays)
        losses["loss_kd"] = distillation_kl(out["kd_features"], t_fea, 0.15)
        total = losses["loss_kd"]
        if "loss_l1" in arrays:
            losses["loss_l1"] = F.l1_loss(out["sr"] / 255, hr / 255)
            total = losses["loss_l1"] + total
        torch.testing.assert_close(out["kd_features"], torch.from_numpy(arrays["student_kd_features"]),
                                   rtol=0, atol=1e-4)
        torch.testing.assert_close(t_fea, torch.from_numpy(arrays["teacher_kd_features"]),
                                   rtol=0, atol=1e-4)
    for key, value in {**losses, "loss_total": total}.items():
        ref = float(arrays[key])
        assert abs(value.item() - ref) <= 1e-5 * abs(ref), key
    optimizer.zero_grad()
    total.backward()
    named = dict(trained.named_parameters())
    grads = {}
    for key in step["recorded_keys"]:
        if "sub_mean" in key:
            continue                                   # a constant buffer of ours
        param = named[_our_key(key, trained_name)]
        if key in step["no_grad_keys"]:
            assert param.grad is None, f"{key}: no gradient in theirs"
            continue
        grads[key] = param.grad.reshape(-1)[:256].clone()
        ref = arrays[f"grad__{key}"]
        assert np.abs(grads[key].numpy() - ref).max() <= 0.05 * np.abs(ref).max(), key
    optimizer.step()
    state = trained.state_dict()
    for key in step["recorded_keys"]:
        if "sub_mean" in key:
            assert np.array_equal(arrays[f"post__{key}"], arrays[f"init__{key}"])
            continue
        ours = state[_our_key(key, trained_name)].reshape(-1)[:256].numpy()
        ok, bulk = _post_step_ok(ours, arrays[f"post__{key}"], step["learning_rate"])
        assert ok, f"post-step {key}: bulk {bulk:.3g} lr"
        if key in step["no_grad_keys"]:
            assert np.array_equal(ours, arrays[f"init__{key}"]), key
    frozen = teacher.state_dict()["encoder.feature_mlp.fc2.bias"].reshape(-1)[:256].numpy()
    assert np.array_equal(frozen, arrays["post__teacher__E.mlp.2.bias"]) or step["trains"] == "teacher"



# ----------------------------------------------------------------------------- through our trainer
STEPS = ["stage3_iso", "stage4_iso", "stage4_anisonoise_encoder"]


@pytest.mark.parametrize("step_name", STEPS)
def test_one_step_through_our_trainer_matches_the_authors(step_name):
    results = kdsr_train.check_step(GOLDEN, step_name)
    assert all(r.passed for r in results), _report(results)
    names = {r.name.split(" (")[0] for r in results}
    recorded = [k for k in INDEX["train"][step_name]["recorded_keys"] if "sub_mean" not in k]
    assert {f"step_{step_name}/post__{k}" for k in recorded} <= names      # every recorded weight
    assert {f"step_{step_name}/{a}" for a in ("loss_l1", "loss_kd", "loss_total")
            if a in np.load(GOLDEN / INDEX["train"][step_name]["file"]).files} <= names


def test_our_phases_train_what_their_stages_train():
    """Teacher: every teacher weight; distillation: every student weight; distillation-encoder:
    the student's encoder without its projection (theirs holds G too, which gets no gradient)."""
    counts = {}
    for step_name in STEPS:
        pair, _, phase, _ = kdsr_train.run_step(GOLDEN, step_name)
        counts[phase.name] = sum(p.numel() for p in pair.parameters() if p.requires_grad)
        assert not any(p.requires_grad for p in pair.teacher.parameters()) or phase.name == "teacher"
    assert counts["teacher"] == INDEX["train"]["stage3_iso"]["optimizer"]["n_parameters"]
    assert counts["distill"] == INDEX["train"]["stage4_iso"]["optimizer"]["n_parameters"]
    student = golden_model(GOLDEN, "kdsr-s-m", 4)
    assert counts["kd_encoder"] == (sum(p.numel() for p in student.encoder.parameters())
                                    - sum(p.numel() for p in student.encoder.degradation_proj.parameters()))


def test_a_student_not_started_from_the_teacher_fails(monkeypatch):
    monkeypatch.setattr(kdsr_train, "begin_phase", lambda model, phase: None)
    failed = {r.name.split(" (")[0] for r in kdsr_train.check_step(GOLDEN, "stage4_iso") if not r.passed}
    assert {"step_stage4_iso/loss_l1", "step_stage4_iso/loss_total"} <= failed


def test_l1_in_0_255_units_fails(monkeypatch):
    """The authors' L1 reads [0,1] images: in 0..255 units the loss (and every update's balance
    against the distillation loss) is 255 times off."""
    build = kdsr_train.build_loss
    monkeypatch.setattr(kdsr_train, "build_loss", lambda *a, **k: build(*a, **{**k, "rgb_range": 255}))
    failed = {r.name.split(" (")[0] for r in kdsr_train.check_step(GOLDEN, "stage3_iso") if not r.passed}
    assert "step_stage3_iso/loss_l1" in failed
