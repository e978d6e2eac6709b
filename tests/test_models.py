"""Behaviour of the models and of MoCo on tiny CPU variants (shapes, gradients, MoCo order);
KDSR's teachers and students at the end."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model
from helpers import TINY, TINY_KDSR, images, tiny
from loss.distillation import distillation_kl
from model.inference import predict
from model.moco import MoCo


def test_every_registered_model_has_a_tiny_variant():
    assert model.model_names() == sorted({**TINY, **TINY_KDSR})


def test_registry_is_case_insensitive_and_lists_names_on_error():
    assert isinstance(tiny("dasr"), model.DASR)
    assert isinstance(model.build_model("CDSR", **TINY["cdsr"]), model.CDSR)
    with pytest.raises(ValueError, match=r"unknown model 'CDRS'; choose one of: cdsr, .*dasr"):
        model.build_model("CDRS")


def test_make_model_reads_only_model_ablation_scale_and_queue_size():
    net = model.make_model(argparse.Namespace(model="dasr", ablation=None, scale=3, queue_size=64))
    assert (net.name, net.scale) == ("dasr", 3)
    assert net.generator.upsampler[0].conv.out_channels == 64 * 9
    assert net.encoder.queue.shape == (256, 64) and net.hparams["queue_size"] == 64


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(TINY))
def test_eval_forward_shape(name, scale):
    net = tiny(name, scale).eval()
    lr = images(2, 3, 24, 24)
    with torch.no_grad():
        sr = net(lr)
        assert torch.equal(sr, net.super_resolve(lr, net.embed(lr)))
    assert sr.shape == (2, 3, 24 * scale, 24 * scale) and sr.dtype == torch.float32
    assert torch.isfinite(sr).all()
    assert net.embed(lr).shape == (2, TINY[name]["embed_dim"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_forward_returns_the_contract_dict(name):
    net = tiny(name).train()
    lr_q, lr_k = images(4, 3, 24, 24, seed=1), images(4, 3, 24, 24, seed=2)
    out = net(lr_q, lr_k)
    k, d = TINY[name]["queue_size"], TINY[name]["embed_dim"]
    assert set(out) == {"logits", "labels", "embedding", "proj_q", "proj_k", "keys", "sr"}
    assert out["logits"].shape == (4, 1 + k)
    assert out["labels"].dtype == torch.int64 and not out["labels"].any()
    assert out["embedding"].shape == out["proj_q"].shape == out["proj_k"].shape == (4, d)
    assert out["sr"].shape == (4, 3, 48, 48)
    assert out["embedding"].requires_grad and not out["proj_k"].requires_grad
    torch.testing.assert_close(out["keys"], F.normalize(out["proj_k"], dim=1))
    assert "sr" not in net(lr_q, lr_k, with_sr=False)
    assert int(net.encoder.queue_ptr) == 0  # the forward changes no MoCo state


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_replicated_forward_changes_no_moco_state(name):
    """What DataParallel and DDP rely on: a training forward leaves the queue, its pointer and
    both encoders' parameters alone (only BatchNorm statistics move, as in any forward)."""
    net = tiny(name).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(images(4, 3, 24, 24, seed=1), images(4, 3, 24, 24, seed=2))
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                           for k in changed)


def _feeds_batchnorm(param_name: str) -> bool:
    # A conv bias right before a train-mode BatchNorm has a true gradient of exactly zero.
    return param_name.endswith("conv.bias") and "encoder." in param_name


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_trainable_parameter_gets_a_gradient(name):
    net = tiny(name).train()
    for module in net.modules():  # DQA's gamma starts at 0, which would block its attention
        if hasattr(module, "gamma"):
            nn.init.constant_(module.gamma, 0.5)
    lr_q, lr_k = images(4, 3, 24, 24, seed=1), images(4, 3, 24, 24, seed=2)
    hr = images(4, 3, 48, 48, seed=3)
    out = net(lr_q, lr_k)
    loss = F.l1_loss(out["sr"], hr) + F.cross_entropy(out["logits"], out["labels"])
    loss.backward()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    key_encoder = {n for n, _ in net.named_parameters() if n.startswith("encoder.key_encoder.")}
    assert key_encoder and not trainable & key_encoder
    assert trainable | key_encoder == {n for n, _ in net.named_parameters()}
    for n, p in net.named_parameters():
        if n in key_encoder:
            assert p.grad is None, n
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if not _feeds_batchnorm(n):
            assert p.grad.abs().sum() > 0, f"{n} got an all-zero gradient"


class ToyEncoder(nn.Module):
    """(B,3,H,W) -> (embedding (B,4), projection (B,4)); enough to test MoCo on its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 4)

    def forward(self, x):
        embedding = self.norm(self.body(x.mean(dim=(2, 3))))
        return embedding, self.head(embedding)


def toy_moco(queue_size: int = 8) -> MoCo:
    torch.manual_seed(0)
    return MoCo(ToyEncoder, dim=4, queue_size=queue_size, momentum=0.9, temperature=0.5).train()


def test_moco_copies_parameters_not_buffers_and_freezes_the_key_encoder():
    moco = toy_moco()
    with torch.no_grad():
        moco.query_encoder.norm.running_mean.fill_(3.0)
    for p_q, p_k in zip(moco.query_encoder.parameters(), moco.key_encoder.parameters()):
        assert torch.equal(p_q, p_k) and not p_k.requires_grad
    assert not moco.key_encoder.norm.running_mean.any()
    assert moco.queue.shape == (4, 8) and torch.allclose(moco.queue.norm(dim=0), torch.ones(8))
    assert moco.queue_ptr.dtype == torch.int64 and int(moco.queue_ptr) == 0


def test_moco_momentum_update_logits_and_enqueue():
    moco = toy_moco()
    with torch.no_grad():  # stand-in for an optimizer step on the query encoder
        for p in moco.query_encoder.parameters():
            p.add_(0.3)
    expected_keys = [p_k * 0.9 + p_q * (1 - 0.9) for p_q, p_k in
                     zip(moco.query_encoder.parameters(), moco.key_encoder.parameters())]
    moco.momentum_update()
    for p_k, expected in zip(moco.key_encoder.parameters(), expected_keys):
        assert torch.equal(p_k, expected)
    old_queue = moco.queue.clone()
    x_q, x_k = images(4, 3, 6, 6, seed=1), images(4, 3, 6, 6, seed=2)
    out = moco(x_q, x_k)
    q, k = F.normalize(out["proj_q"], dim=1), F.normalize(out["proj_k"], dim=1)
    torch.testing.assert_close(out["logits"][:, 0], (q * k).sum(1) / 0.5)
    torch.testing.assert_close(out["logits"][:, 1:], q @ old_queue / 0.5)
    assert torch.equal(out["keys"], k)
    moco.enqueue(out["keys"])
    torch.testing.assert_close(moco.queue[:, :4], k.T)
    assert torch.equal(moco.queue[:, 4:], old_queue[:, 4:])
    assert int(moco.queue_ptr) == 4
    torch.testing.assert_close(out["proj_k"], moco.key_encoder(x_k)[1])


def test_moco_queue_wraps_around():
    moco = toy_moco(queue_size=6)
    keys = F.normalize(images(4, 4, seed=3), dim=1)
    moco.enqueue(keys)
    moco.enqueue(keys.flip(0))
    torch.testing.assert_close(moco.queue[:, [4, 5, 0, 1]], keys.flip(0).T)
    assert int(moco.queue_ptr) == 2
    with pytest.raises(ValueError, match="exceeds the queue size"):
        moco.enqueue(images(7, 4))


def test_a_training_step_enqueues_after_the_backward():
    """Enqueueing before the backward would overwrite the queue autograd still needs."""
    moco = toy_moco()
    out = moco(images(4, 3, 6, 6, seed=1), images(4, 3, 6, 6, seed=2))
    moco.enqueue(out["keys"])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        F.cross_entropy(out["logits"], out["labels"]).backward()


@pytest.mark.parametrize("name", sorted(TINY))
def test_input_must_be_a_float_rgb_batch(name):
    net = tiny(name).eval()
    uint8 = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    for bad in (images(3, 24, 24), images(1, 1, 24, 24), uint8):
        with pytest.raises(ValueError, match="B,3,H,W|floating"):
            net(bad)


def test_cdsr_rejects_inputs_smaller_than_its_patch_size():
    net = tiny("cdsr").eval()
    with pytest.raises(ValueError, match=r"11x30.*>= 12"):
        net(images(1, 3, 11, 30))
    with pytest.raises(ValueError, match=r"30x11.*>= 12"):
        net.embed(images(1, 3, 30, 11))
    with pytest.raises(ValueError, match=r"needs H and W >= 12, got a 8x12 input"):
        net.encoder.query_encoder.patch_branch(images(1, 3, 8, 12))
    assert net(images(1, 3, 12, 12)).shape == (1, 3, 24, 24)
    embedding = net.embed(images(1, 3, 12, 12))  # the generator alone takes any tile size
    assert net.super_resolve(images(1, 3, 5, 7), embedding).shape == (1, 3, 10, 14)
    with pytest.raises(ValueError, match=r"embedding must be \(B,embed_dim\) with B = 2"):
        net.super_resolve(images(2, 3, 12, 12), embedding)


@pytest.mark.parametrize("size", [(24, 36), (30, 26)])
@pytest.mark.parametrize("name", sorted(TINY))
def test_non_square_inputs(name, size):
    net = tiny(name, scale=3).eval()
    with torch.no_grad():
        sr = net(images(2, 3, *size))
    assert sr.shape == (2, 3, 3 * size[0], 3 * size[1])


def test_cdsr_patch_branch_ignores_the_remainder_below_and_right():
    net = tiny("cdsr").eval()
    x = images(2, 3, 30, 26) / 255
    branch = net.encoder.query_encoder.patch_branch
    with torch.no_grad():
        torch.testing.assert_close(branch(x), branch(x[..., :24, :24]), rtol=0, atol=1e-6)
        assert not torch.allclose(branch(x), branch(x[..., 6:, 2:]))


def test_dasr_mean_shift_is_a_constant_buffer():
    net = tiny("dasr")
    assert not any("rgb_mean" in k for k in net.state_dict())
    torch.testing.assert_close(net.generator.rgb_mean.flatten(),
                               255 * torch.tensor([0.4488, 0.4371, 0.4040]))
    assert net.double().generator.rgb_mean.dtype == torch.float64


# ----------------------------------------------------------------------------- KDSR
KDSR_NAMES = sorted(TINY_KDSR)
TEACHERS = [n for n in KDSR_NAMES if n.startswith("kdsr-t")]
STUDENTS = [n for n in KDSR_NAMES if n.startswith("kdsr-s")]


def kdsr_inputs(net, batch: int = 2, size: tuple = (12, 10), seed: int = 0) -> tuple:
    """(lr, extra) for a tiny KDSR: extra is (hr,) for a teacher, () for a student."""
    lr = images(batch, 3, *size, seed=seed)
    hr = images(batch, 3, net.scale * size[0], net.scale * size[1], seed=seed + 100)
    return lr, ((hr,) if net.needs_hr else ())


@pytest.mark.parametrize("spelling,name", [
    ("KDSR-S-M", "kdsr-s-m"), ("kdsr_s_m", "kdsr-s-m"), ("KDSRsM", "kdsr-s-m"),
    ("kdsr s l", "kdsr-s-l"), ("KDSR_T_L", "kdsr-t-l"), ("kdsr-t", "kdsr-t-m"),
    ("KDSR-T", "kdsr-t-m"), ("kdsr_s", "kdsr-s-m"), ("CDSR_no_patch", "cdsr-no-patch")])
def test_registry_spellings_of_a_name(spelling, name):
    assert model.canonical_name(spelling) == name
    assert model.build_model(spelling, **TINY_KDSR.get(name, TINY.get(name))).name == name


def test_registry_rejects_other_names_and_contradicting_sizes():
    for bad in ("kdsr", "kdsr-m", "kdsr-s-xl", "KDSRsS", None):
        with pytest.raises(ValueError, match=r"unknown model .*kdsr-s-l, kdsr-s-m, kdsr-t-l, "
                                             r"kdsr-t-m \(aliases: kdsr-t = kdsr-t-m"):
            model.build_model(bad)
    with pytest.raises(ValueError, match="build 'kdsr-s-l', not 'kdsr-s-m'"):
        model.build_model("kdsr-s-m", size="l", **TINY_KDSR["kdsr-s-m"])
    with pytest.raises(ValueError, match="unknown KDSR size 'xl'"):
        model.KDSRStudent(size="xl")


def test_make_model_builds_kdsr_at_the_authors_sizes_without_a_queue():
    """A student's run trains its teacher too: make_model gives the pair (teacher, student)."""
    args = argparse.Namespace(model="KDSR-S-L", ablation=None, scale=2, queue_size=64,
                              n_feats=None, n_blocks=None, n_resblocks=None)
    pair = model.make_model(args)
    assert isinstance(pair, model.KDSRDistillation) and (pair.name, pair.scale) == ("kdsr-s-l", 2)
    net = pair.student
    assert (net.name, net.scale) == ("kdsr-s-l", 2)
    assert net.hparams == {"size": "l", "n_feats": 128, "n_blocks": 28, "n_resblocks": 5}
    assert len(net.generator.blocks) == 28 and len(net.encoder.res_blocks) == 5
    assert (pair.teacher.name, pair.teacher.hparams) == ("kdsr-t-l", net.hparams)
    teacher = model.make_model(argparse.Namespace(**{**vars(args), "model": "kdsr_t_l"}))
    assert isinstance(teacher, model.KDSRTeacher) and teacher.name == "kdsr-t-l"
    widths = dict(n_feats=128, n_blocks=28, n_resblocks=5)    # the authors' L flags, checked
    assert model.make_model(argparse.Namespace(**{**vars(args), **widths})).hparams == net.hparams


@pytest.mark.parametrize("name", KDSR_NAMES)
def test_kdsr_hparams_rebuild_the_same_network(name):
    net = tiny(name, scale=3)
    assert net.hparams == {"size": name[-1], **TINY_KDSR[name]}
    twin = model.build_model(name, scale=3, **net.hparams)
    assert {k: v.shape for k, v in twin.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    assert not any("rgb_mean" in k for k in net.state_dict())   # MeanShift: a constant buffer


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", KDSR_NAMES)
def test_kdsr_eval_forward_shape(name, scale):
    net = tiny(name, scale).eval()
    lr, extra = kdsr_inputs(net)
    with torch.no_grad():
        sr = net(lr, *extra)
        embedding = net.embed(lr, *extra)
        assert torch.equal(sr, net.super_resolve(lr, embedding))
        features = net(lr, *extra, features=True)
    assert sr.shape == (2, 3, 12 * scale, 10 * scale) and sr.dtype == torch.float32
    assert torch.isfinite(sr).all()
    c = TINY_KDSR[name]["n_feats"]
    assert embedding.shape == (2, c)
    assert set(features) == {"embedding", "kd_features", "sr"}
    assert features["kd_features"].shape == (2, 4 * c)
    assert torch.equal(features["sr"], sr) and torch.equal(features["embedding"], embedding)
    assert set(net(lr, *extra, features=True, with_sr=False)) == {"embedding", "kd_features"}


@pytest.mark.parametrize("name", KDSR_NAMES)
def test_kdsr_every_parameter_gets_a_gradient(name):
    """Teacher stage: L1 on the SR. Distillation stage: L1 + the KL term on kd_features."""
    net = tiny(name, 4).train()
    lr, extra = kdsr_inputs(net, size=(6, 6))
    hr = images(2, 3, 24, 24, seed=5)
    out = net(lr, *extra, features=True)
    loss = F.l1_loss(out["sr"], hr)
    if not net.needs_hr:
        loss = loss + distillation_kl(out["kd_features"], images(2, 32, seed=6) / 64, 0.15)
    loss.backward()
    for n, p in net.named_parameters():
        assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} got an all-zero gradient"


@pytest.mark.parametrize("name", TEACHERS)
def test_the_teacher_reads_the_hr_and_says_so_without_it(name):
    net = tiny(name, 2).eval()
    assert net.needs_hr
    lr, (hr,) = kdsr_inputs(net, batch=1)
    with pytest.raises(ValueError, match=rf"{name.upper()} is the distillation teacher.*student "
                                         rf"kdsr-s-{name[-1]}"):
        net(lr)
    with pytest.raises(ValueError, match=r"hr must be \(1, 3, 24, 20\).*got \(1, 3, 24, 22\)"):
        net.embed(lr, images(1, 3, 24, 22))
    with pytest.raises(ValueError, match=r"hr must be a \(B,3,H,W\)"):
        net(lr, hr[0])
    with torch.no_grad():   # the encoder sees the HR: another HR, another embedding and SR
        assert not torch.equal(net.embed(lr, hr), net.embed(lr, hr.flip(-1)))
        assert not torch.equal(net(lr, hr), net(lr, hr.flip(-1)))


@pytest.mark.parametrize("name", STUDENTS)
def test_the_student_refuses_an_hr_and_any_non_rgb_input(name):
    net = tiny(name, 2).eval()
    assert not net.needs_hr
    lr, _ = kdsr_inputs(net, batch=1)
    with pytest.raises(ValueError, match=rf"student.*the HR is for the teacher \(kdsr-t-{name[-1]}\)"):
        net(lr, images(1, 3, 24, 20))
    uint8 = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    for bad in (images(3, 24, 24), images(1, 1, 24, 24), uint8):
        with pytest.raises(ValueError, match="B,3,H,W|floating"):
            net(bad)


@pytest.mark.parametrize("name", STUDENTS)
def test_kdsr_tiled_forward_is_the_whole_forward(name):
    """The student's generator has no pooling: tiles with enough overlap change nothing (the
    tiny one's receptive radius is 8 LR px: head, 2 x (depthwise + conv), body, upsampler)."""
    net = tiny(name, 2).eval()
    lr = images(1, 3, 30, 26, seed=3)
    with torch.no_grad():
        whole = net(lr)
        tiled = predict(net, lr, tile=12, overlap=8)
        torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-3)
        assert not torch.allclose(predict(net, lr, tile=12, overlap=2), whole, rtol=0, atol=1e-3)
