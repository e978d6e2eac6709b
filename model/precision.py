"""Numeric precision of training: float32, TF32, or mixed bfloat16 / float16 (autocast).

Checkpoints stay float32 whatever the precision (autocast casts on the fly; the weights, Adam's
moments and the MoCo queue are float32), so runs in any precision load into each other. The
contrastive part (MoCo's normalisation and logits), the cross-entropy and the L1 are computed in
float32 under every precision (see ``MoCo.forward`` and ``loss.Criterion``).
"""
import contextlib
import logging
from typing import ContextManager, Optional

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("cdsr.model")  # a child of the run's logger


def cpu_has_kernels(dtype: torch.dtype) -> bool:
    """Whether this CPU has native ``dtype`` (bfloat16 / float16) kernels in oneDNN. Without
    them autocast falls back to PyTorch's reference convolution: a bfloat16 eval forward ran
    30-300x slower than float32 on such a CPU (README, "Testing", own images)."""
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_fp16_supported()


def warn_if_emulated(device: torch.device, dtype: Optional[torch.dtype], flag: str) -> None:
    """One warning when ``flag`` asks for a ``dtype`` this CPU can only emulate."""
    if device.type == "cpu" and dtype is not None and not cpu_has_kernels(dtype):
        name = str(dtype).replace("torch.", "")
        log.warning(f"{flag}: this CPU has no native {name} kernels, so it runs far "
                    f"slower than float32 here; it is meant for GPUs (and CPUs with {name} units)")


class Precision:
    """One of ``PRECISIONS`` for training on ``device``:

    * ``fp32``: true float32, TF32 off for convolutions and matrix products;
    * ``tf32``: PyTorch's default, the framework's default: convolutions may use TF32 on
      Ampere and newer GPUs, matrix products stay float32 (same as fp32 on the CPU);
    * ``bf16``: autocast to bfloat16;
    * ``fp16``: autocast to float16 with a dynamic gradient scaler (its state is in every
      ``last.pt``).

    Under DataParallel the replicas keep this dtype (``model.parallel.DataParallel``).
    """

    def __init__(self, name: str = "tf32", device: torch.device = torch.device("cpu")) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
        self.name = name
        self.dtype = _AUTOCAST.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        self.device = device
        warn_if_emulated(device, self.dtype, f"--precision {name}")
        self.activate()

    def activate(self) -> None:
        """Set PyTorch's process-wide TF32 switches for this precision (CUDA only; done at
        construction, again when several precisions take turns in one process)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = self.name != "fp32"
            torch.backends.cuda.matmul.allow_tf32 = False

    @property
    def scales_gradients(self) -> bool:
        return self.scaler is not None

    @property
    def gradient_scale(self) -> float:
        """The factor the loss is multiplied by before the backward (1 without a scaler)."""
        return self.scaler.get_scale() if self.scaler else 1.0

    def autocast(self, device: torch.device) -> ContextManager:
        """The context the forward runs in (nothing for fp32/tf32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step(), through the scaler for fp16, which skips a step whose gradients
        overflowed (and lowers its scale). Returns whether the parameters were updated."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
