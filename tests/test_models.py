"""Behaviour of the models and of MoCo on tiny CPU variants (shapes, gradients, MoCo order)."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model
from helpers import TINY, images, tiny
from model.moco import MoCo


def test_every_registered_model_has_a_tiny_variant():
    assert model.model_names() == sorted(TINY)


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
