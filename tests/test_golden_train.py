"""Our training step (model.training.training_step) against the authors' (../shared/golden/train).

The steps run in ``scripts/golden/train.py``, the comparison rules live in
``scripts/golden/train_compare.py``; see train/README.md for the recipe and the tolerances.
"""
import copy

import numpy as np
import pytest
import torch

from model import training
from scripts.golden import train as golden_train
from scripts.golden import train_compare


def _report(results) -> str:
    return "\n".join(f"{r.name}: {r.max_error:g} {r.unit} > {r.tolerance:g}" for r in results if not r.passed)


def _case(golden_dir, name, phases=None):
    index = golden_train.read_index(golden_dir)
    case = next(c for c in golden_train.train_cases(index) if c.name == name)
    if phases is not None:
        case = golden_train.TrainCase(case.name, case.scale, None,
                                      {p: files for p, files in case.phases.items() if p in phases})
    return index, case


def test_tolerance_table_is_the_index_one(golden_dir):
    rules = golden_train.read_index(golden_dir)["tolerances"]["rules"]
    ours = train_compare.TOLERANCES
    for stage in ("it1", "it2"):
        assert [ours[stage][k] for k in ("loss_sr", "loss_c", "logits", "sr")] == [
            rules[k][stage] for k in ("loss_sr", "loss_c", "logits", "sr")]
        assert list(ours[stage]["loss_total"]) == rules["loss_total"][stage]
        assert ours[stage]["vector"] == rules["embedding_q, proj_q, proj_k"][stage]
        assert ours[stage]["grad"] == rules["grad__*"][stage]
        assert ours[stage]["param"] == rules["post_step__ G.* and E.encoder_q.* parameters"][stage]
        assert ours[stage]["key_param"] == rules["post_step__ E.encoder_k.* parameters"][stage]
        assert list(ours[stage]["bn"]) == rules["BN running_mean / running_var (encoder_q and encoder_k)"][stage]
        assert ours[stage]["queue"] == rules["E.queue columns"][stage]


@pytest.mark.parametrize("threads", [1, 2])
def test_dasr_passes_at_any_thread_count(golden_dir, threads):
    """The README's checker passes at any thread count (2 threads used to fail one DASR
    parameter, before the iteration-1 outlier allowance)."""
    index, case = _case(golden_dir, "dasr")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = golden_train.check_train_case(golden_dir, index, case)
    finally:
        torch.set_num_threads(before)
    assert all(r.passed for r in results), _report(results)


@pytest.mark.parametrize("stage", ["it1", "it2"])
def test_parameter_rule_allows_few_outliers_of_at_most_two_lr(stage):
    """0.5% of a slice may move up to 2 lr; one more outlier, or one beyond 2 lr, fails."""
    lr, ref = 1e-4, np.zeros(1000, dtype=np.float32)
    rule = train_compare.TOLERANCES[stage]["param"]

    def passes(moved: np.ndarray) -> bool:
        return all(r.passed for r in train_compare._parameter_moves("p", moved, ref, lr, rule))

    moved = ref.copy()
    moved[:5] = 2 * lr                       # floor(0.5% of 1000) = 5 outliers
    assert passes(moved)
    moved[5] = 2 * lr                        # a sixth
    assert not passes(moved)
    moved[5] = 0.0
    moved[0] = 2.1 * lr                      # one beyond 2 lr
    assert not passes(moved)


@pytest.mark.parametrize("name", ["cdsr", "dasr"])
def test_joint_and_encoder_steps_match_the_authors(golden_dir, name):
    index, case = _case(golden_dir, name)
    assert set(case.phases) == {"joint", "pretrain"} and case.init_file is not None
    results = golden_train.check_train_case(golden_dir, index, case)
    assert all(r.passed for r in results), _report(results)
    # every recorded array was compared
    names = {r.name.split(" (")[0] for r in results}
    stems = {case.init_file: f"{name}_x{case.scale}_init"}
    stems.update({f: f[:-len(".npz")] for files in case.phases.values() for f in files.values()})
    for file_name, stem in stems.items():
        arrays = np.load(golden_dir / "train" / file_name).files
        missing = [a for a in arrays if f"{stem}/{a}" not in names]
        assert not missing, (file_name, missing)
    assert sum(r.name.startswith(f"{name}_x2_") and "optimizer_tensors" in r.name for r in results) == 2


def test_encoder_phase_updates_what_the_authors_update(golden_dir):
    """Our encoder-phase Adam holds only the query encoder; the authors' also holds G, which
    gets no gradient there, so the two give bitwise the same state."""
    index = golden_train.read_index(golden_dir)
    batch = np.load(golden_dir / "train" / index["batch"]["file"])
    x, hr = torch.from_numpy(batch["x"]), torch.from_numpy(batch["hr"])
    lr = index["models"]["cdsr"]["values"]["pretrain"]["lr"]
    start = golden_train.initial_state(golden_dir, "cdsr", 2)
    ours = copy.deepcopy(start)
    _, _, _, optimizer = next(golden_train.run_phase(ours, "cdsr", "pretrain", lr, x, hr, 1))
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in ours.encoder.query_encoder.parameters()}

    theirs = copy.deepcopy(start)
    phase = training.Phase(name=training.ENCODER, first=1, last=1, base_lr=lr, step=1, gamma=1.0, origin=0)
    training.set_trainable(theirs, phase)
    for p in theirs.generator.parameters():
        p.requires_grad_(True)
    adam = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=lr)
    assert len(adam.param_groups[0]["params"]) == index["models"]["cdsr"]["n_tensors_in_optimizer"]
    training.training_step(theirs, x * 255, hr, phase, golden_train.build_loss("1*L1", 1.0), adam)
    assert all(p.grad is None for p in theirs.generator.parameters())
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), key
    for key, value in start.generator.state_dict().items():
        assert torch.equal(value, ours.generator.state_dict()[key]), key


def test_cdsr_encoder_phase_without_the_pixel_scale_fails(golden_dir, monkeypatch):
    """The authors' CDSR encoder-only phase feeds 0..255 pixels; ours [0,1]: without the x255
    the checker must fail (the README's 'pre-train input divided by 255' mistake)."""
    monkeypatch.setattr(golden_train, "ENCODER_PIXEL_SCALE", {})
    index, case = _case(golden_dir, "cdsr", phases={"pretrain"})
    failed = {r.name.split(" (")[0] for r in golden_train.check_train_case(golden_dir, index, case)
              if not r.passed}
    assert {"cdsr_x2_pretrain_it1/loss_c", "cdsr_x2_pretrain_it1/logits",
            "cdsr_x2_pretrain_it1/post_step__E.encoder_q.conv1.bn1.running_var"} <= failed


def test_key_encoder_batchnorm_in_eval_mode_fails(golden_dir, monkeypatch):
    original = training.set_trainable

    def key_encoder_eval(net, phase):
        original(net, phase)
        net.encoder.key_encoder.eval()

    monkeypatch.setattr(training, "set_trainable", key_encoder_eval)
    index, case = _case(golden_dir, "dasr", phases={"pretrain"})
    failed = {r.name.split(" (")[0] for r in golden_train.check_train_case(golden_dir, index, case)
              if not r.passed}
    assert {"dasr_x2_pretrain_it1/logits", "dasr_x2_pretrain_it1/proj_k",
            "dasr_x2_pretrain_it1/post_step__E.encoder_k.E.1.num_batches_tracked"} <= failed
