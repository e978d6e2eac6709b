"""Training on several devices: torchrun's process group, DistributedDataParallel or
DataParallel, BatchNorm over the global batch, and the collectives the training step needs.

One process per device under ``torchrun`` (NCCL on CUDA, gloo on the CPU); without torchrun a
single process, optionally with DataParallel over ``--n_GPUs`` CUDA devices. Every helper here
is a no-op for a single process, so the training code reads the same in every mode.
"""
import datetime
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, List, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import nn

import utility

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)   # a collective that waits longer ends the job


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    machine; ``distributed`` when launched by torchrun (even with one process)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, tables, plots and checkpoints and validates."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restarted_by_torchrun() -> bool:
    """Whether torchrun restarted this job after a failure (``--max-restarts``): the same
    command runs again and should continue the run (``TORCHELASTIC_RESTART_COUNT`` > 0)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def process_group_from_env() -> ProcessGroup:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, without joining anything (cheap, no side
    effects); a single process when not launched by torchrun."""
    if not launched_by_torchrun():
        return ProcessGroup()
    return ProcessGroup(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                        int(os.environ.get("LOCAL_RANK", 0)), distributed=True)


_joined = False


def joined_process_group() -> bool:
    """Whether this process has joined torchrun's process group (it may have left it since)."""
    return _joined


def reports_errors() -> bool:
    """Whether this process prints its error line (``utility.run_cli``'s ``reports_errors``).
    Under torchrun, before the processes have joined (option and data checks, the same
    everywhere) only rank 0 does, so the user reads the line once; a process that fails later
    always does, naming its rank."""
    return os.environ.get("RANK", "0") == "0" or joined_process_group()


def init_process_group(group: ProcessGroup, device: torch.device) -> None:
    """Join torchrun's process group: NCCL for CUDA devices, gloo for the CPU."""
    global _joined
    if not group.distributed or dist.is_initialized():
        return
    _joined = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the group (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every process (nothing for one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on every process -> (world_size * b, ...), the processes' rows in rank order
    (no gradient). One process: x itself."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``x`` over all processes (``x`` itself for one process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one process (all processes get the same answer)."""
    return bool(sum_over_processes(torch.tensor([float(flag)], device=device)).item() > 0)


def max_over_processes(value: int, device: torch.device) -> int:
    """The largest ``value`` over all processes (all processes get the same answer)."""
    if not is_distributed():
        return value
    x = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return int(x.item())


def check_in_sync(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise RuntimeError unless ``tensors`` hold the same values on every process (compared
    through float64 sums and sums of squares; nothing for one process)."""
    if not is_distributed():
        return
    local = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors])
    everyone = gather_rows(local[None])                                  # (W,n,2)
    if not torch.equal(everyone, everyone[:1].expand_as(everyone)):
        differing = (everyone != everyone[:1]).flatten(1).any(1).nonzero().flatten().tolist()
        raise RuntimeError(f"{what} differ between processes (ranks {differing} vs rank 0); "
                           "the processes no longer train the same model")


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank_zero(work: Callable[[], T]) -> T:
    """``work()`` done by rank 0 alone (e.g. reading a file only its machine may hold), its
    result sent to every process. When ``work`` raises, rank 0 raises that error (and prints
    it) while the others raise ``utility.FailedOnRankZero`` (they end quietly): no process
    waits for a result that never comes. One process: ``work()``."""
    if not is_distributed():
        return work()
    if dist.get_rank() != 0:
        done, result = broadcast_object(None)
        if not done:
            raise utility.FailedOnRankZero("rank 0 failed; it printed why")
        return result
    try:
        result = work()
    except BaseException:
        broadcast_object((False, None))
        raise
    broadcast_object((True, result))
    return result


# ------------------------------------------------------------------------------- BatchNorm
class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch of all processes
    (any device, gloo or NCCL; ``torch.nn.SyncBatchNorm`` refuses the CPU). Same parameters,
    buffers and state-dict keys as ``nn.BatchNorm2d``; a single process, eval mode or frozen
    statistics behave exactly like it.

    Per-process means and squared deviations are combined exactly (Chan's parallel variance),
    and gradients flow back through the all-gather to every process's inputs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,C,H,W) of any float dtype -> the same shape and dtype. The statistics, their
        all-gather and the normalisation are float32 whatever autocast says (float16's
        second moment overflows, bfloat16's mean is off by a percent of a standard deviation
        at mean/std 10), as native BatchNorm accumulates in float32."""
        if not (self.training and is_distributed()):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return self._global_forward(x.float()).to(x.dtype)

    def _global_forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.numel() // x.shape[1]                                  # per channel, here
        local_mean = x.mean(dim=(0, 2, 3))                               # (C,)
        local_m2 = ((x - local_mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3))
        stats = torch.stack([local_mean, local_m2])                      # (2,C)
        gathered = dist_autograd.all_gather(stats)                     # W x (2,C), differentiable
        means = torch.stack([g[0] for g in gathered])                   # (W,C)
        m2 = torch.stack([g[1] for g in gathered]).sum(0)
        total = count * len(gathered)
        mean = means.mean(0)
        var = (m2 + count * ((means - mean) ** 2).sum(0)) / total       # biased, for normalising
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * total / max(total - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        out = (x - mean[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by ``GlobalBatchNorm2d`` with
    the same parameters and buffers; returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum,
                                            child.affine, child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            for new, old in zip(replacement.parameters(), child.parameters()):
                new.requires_grad_(old.requires_grad)      # a MoCo key encoder's stay frozen
            replacement.train(child.training)
            replacement.to(next(child.buffers(), torch.empty(0)).device)
            setattr(module, name, replacement)
        else:
            convert_to_global_batchnorm(child)
    return module


# ------------------------------------------------------------------------------- wrappers
def _under_autocast(module: nn.Module, device_type: str, dtype: torch.dtype, *args: Any,
                    **kwargs: Any) -> Any:
    with torch.autocast(device_type, dtype=dtype):
        return module(*args, **kwargs)


class DataParallel(nn.DataParallel):
    """``nn.DataParallel`` whose replicas compute in the caller's autocast dtype.

    Autocast's state is per thread, and torch's ``parallel_apply`` runs each replica in a
    thread of its own where it re-enters ``torch.autocast(device_type, enabled=...)`` without
    a dtype: that thread's default, float16 on CUDA. Under ``--precision bf16`` the replicas
    would compute in float16 without a gradient scaler. Here each replica's forward runs
    under the caller's autocast dtype."""

    def parallel_apply(self, replicas: Sequence[nn.Module], inputs: Sequence[Any],
                       kwargs: Any) -> List[Any]:
        device_type = getattr(self, "src_device_obj", torch.device("cpu")).type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            replicas = [partial(_under_autocast, replica, device_type, dtype) for replica in replicas]
        return super().parallel_apply(replicas, inputs, kwargs)


def unwrap(net: nn.Module) -> nn.Module:
    """The real module inside a DataParallel / DistributedDataParallel wrapper."""
    return net.module if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else net


def data_parallel_devices(n_gpus: int, device: torch.device) -> Sequence[int]:
    """CUDA device ids for DataParallel (empty: no DataParallel). ValueError when more GPUs are
    asked for than are visible."""
    if device.type != "cuda" or n_gpus <= 1:
        return []
    if n_gpus > torch.cuda.device_count():
        raise ValueError(f"--n_GPUs {n_gpus} but only {torch.cuda.device_count()} CUDA "
                         "device(s) are visible; lower --n_GPUs or check CUDA_VISIBLE_DEVICES")
    return list(range(n_gpus))


def wrap(model: nn.Module, group: ProcessGroup, device: torch.device,
         data_parallel: Sequence[int] = ()) -> nn.Module:
    """The module the training step calls: DDP under torchrun (over the parameters that
    currently require gradients: rebuild it when that set changes), else DataParallel over
    ``data_parallel`` devices (whose replicas keep the caller's autocast dtype), else
    ``model`` itself.

    DDP copies rank 0's parameters and buffers to every process when it is built, and does not
    synchronise buffers at each forward after that: the MoCo queues stay equal because every
    process enqueues the same gathered keys, and BatchNorm statistics are each process's own
    (rank 0's are saved and used for validation) or, with ``GlobalBatchNorm2d``, global.
    """
    if group.distributed:
        if not any(p.requires_grad for p in model.parameters()):
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False)
    if len(data_parallel) > 1:
        return DataParallel(model, list(data_parallel))
    return model
