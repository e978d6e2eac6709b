"""Mixed precision on the CPU (tiny models): bf16 and fp16 steps run through ``training_step``,
compute in low precision, and keep everything stored (weights, Adam state, MoCo queue) and the
contrastive logits and losses in float32, so checkpoints load into any precision."""
import pytest
import torch

from helpers import images, tiny
from loss import build_loss
from model.checkpoint import load_weights, read_checkpoint, save_checkpoint
from model import precision as precision_module
from model.inference import predict
from model.precision import Precision, warn_if_emulated
from model.training import JOINT, Phase, make_optimizer, set_trainable, training_step

CPU = torch.device("cpu")
PHASE = Phase(JOINT, 1, 1, base_lr=1e-3, step=10, gamma=0.5, origin=0)
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train(name: str, precision: str, steps: int = 1, seed: int = 0):
    """A tiny model after ``steps`` applied joint steps in ``precision`` (fp16's gradient scaler
    skips the first steps while it lowers its scale); (model, optimizer, last step, the dtypes
    the convolutions computed in)."""
    net = tiny(name, scale=2, seed=seed)
    set_trainable(net, PHASE)
    optimizer = make_optimizer(net, PHASE.base_lr)
    criterion = build_loss("1*L1", 1.0)
    arithmetic = Precision(precision, CPU)
    computed = set()
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, inputs, output: computed.add(output.dtype))
    applied = 0
    for i in range(steps + 30):
        lr = images(4, 2, 3, 24, 24, seed=10 + i).round()
        hr = images(4, 3, 48, 48, seed=20 + i)
        scale = arithmetic.scaler.get_scale() if arithmetic.scaler else 0.0
        ptr = int(net.encoder.queue_ptr)
        step = training_step(net, lr, hr, PHASE, criterion, optimizer, precision=arithmetic)
        # fp16: the scaler skips Adam's step (and lowers its scale) when gradients overflow;
        # such a step is finite but not applied, and enqueues nothing.
        skipped = arithmetic.scaler is not None and arithmetic.scaler.get_scale() < scale
        assert step.finite and step.applied == (not skipped)
        assert int(net.encoder.queue_ptr) == (ptr + 4 * step.applied) % net.encoder.queue_size
        applied += step.applied
        if applied == steps:
            return net, optimizer, step, computed
    raise AssertionError(f"{precision}: fewer than {steps} of {steps + 30} steps were applied")


def float_tensors(net, optimizer):
    state = [v for s in optimizer.state.values() for v in s.values()
             if torch.is_tensor(v) and v.is_floating_point()]
    return [*net.parameters(), *(b for b in net.buffers() if b.is_floating_point()), *state]


@pytest.mark.parametrize("precision", sorted(LOW))
@pytest.mark.parametrize("name", ["cdsr", "dasr"])
def test_low_precision_step_computes_low_and_stores_float32(name, precision):
    net, optimizer, step, computed = train(name, precision)
    assert computed == {LOW[precision]}                    # the convolutions ran in low precision
    assert step.outputs["logits"].dtype == torch.float32   # MoCo logits in float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in step.losses.values())
    assert optimizer.state, "Adam took no step"
    assert all(t.dtype == torch.float32 for t in float_tensors(net, optimizer))
    assert net.encoder.queue.dtype == torch.float32
    ptr = int(net.encoder.queue_ptr)                       # the applied step's keys, as float32
    assert torch.equal(net.encoder.queue[:, ptr - 4:ptr], step.outputs["keys"].T)


def test_bf16_losses_follow_fp32():
    *_, low, _ = train("dasr", "bf16", steps=2)
    *_, full, computed = train("dasr", "fp32", steps=2)
    assert computed == {torch.float32}
    for key, value in full.reported.items():
        assert low.reported[key] == pytest.approx(value, rel=0.05), key


@pytest.mark.parametrize("precision", sorted(LOW))
def test_checkpoints_load_across_precisions(precision, tmp_path):
    trained, *_ = train("cdsr", precision, steps=2)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model_name="cdsr", scale=2, model=trained.state_dict())
    fresh = tiny("cdsr", scale=2, seed=1)
    assert load_weights(fresh, read_checkpoint(path)) == "ours"
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                  trained.state_dict().values()))
    lr = images(1, 3, 24, 24, seed=3)
    with torch.no_grad():                                 # evaluation in float32 ...
        assert fresh.eval()(lr).dtype == torch.float32
    # ... and training goes on in another precision from the same file.
    other = "fp32"
    set_trainable(fresh, PHASE)
    step = training_step(fresh, images(4, 2, 3, 24, 24, seed=4).round(), images(4, 3, 48, 48),
                         PHASE, build_loss("1*L1", 1.0), make_optimizer(fresh, 1e-3),
                         precision=Precision(other, CPU))
    assert step.applied


def test_bf16_inference_computes_low_and_returns_float32():
    net = tiny("cdsr", scale=2).eval()
    computed = set()
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, inputs, output: computed.add(output.dtype))
    lr = images(1, 3, 16, 16)
    with torch.no_grad():
        exact = predict(net, lr)
        assert computed == {torch.float32}
        computed.clear()
        low = predict(net, lr, bf16=True)
    assert computed == {torch.bfloat16} and low.dtype == torch.float32 and low.shape == exact.shape
    deviation = (low - exact).abs()
    assert 0 < deviation.max() < 0.05 * exact.abs().max()   # bfloat16 keeps 8 significant bits


@pytest.mark.parametrize("native", [True, False])
def test_emulated_low_precision_on_the_cpu_is_announced(native, monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "cpu_has_kernels", lambda dtype: native)
    with caplog.at_level("WARNING", logger="cdsr"):
        Precision("bf16", CPU)
        warn_if_emulated(CPU, torch.bfloat16, "--bf16")
        warn_if_emulated(CPU, None, "--precision fp32")
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ([] if native else [
        "--precision bf16: this CPU has no native bfloat16 kernels, so it runs far slower than "
        "float32 here; it is meant for GPUs (and CPUs with bfloat16 units)",
        "--bf16: this CPU has no native bfloat16 kernels, so it runs far slower than float32 "
        "here; it is meant for GPUs (and CPUs with bfloat16 units)"])
