"""Measuring tools shared by the benchmarks: timing with CPU time and page faults, peak memory
(CUDA allocator; on the CPU, live tensor bytes from torch.profiler), FLOP counting with grouped
convolutions counted right, the machine's GEMM rate, host load, the allocator settings, and the
workload flags the benchmarks share."""
import argparse
import contextlib
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Dict, Iterator, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

MiB = 2 ** 20
MATMUL_SIDE = 2048
MATMUL_DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
                "fp16": torch.float16}


def add_workload_flags(parser: argparse.ArgumentParser, *, iterations: int, iterations_help: str) -> None:
    """Add the flags of bench_train.py and bench_vs_authors.py, in this order: the training
    batch (--batch_size, --patch_size, --scale), the timed and untimed rounds (--iterations,
    default ``iterations``; --warmup) and the CPU threads (--threads)."""
    parser.add_argument("--batch_size", type=int, default=4, help="training images per step")
    parser.add_argument("--patch_size", type=int, default=48, help="LR patch side")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    parser.add_argument("--iterations", type=int, default=iterations, help=iterations_help)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def host_load() -> str:
    """The 1/5/15-minute load averages and the CPU count, e.g. '5.6 5.2 3.5 on 2 CPUs'."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{load} on {os.cpu_count()} CPUs"


def allocator_settings() -> str:
    """glibc malloc settings from the environment (they change page faults, see README)."""
    found = [f"{k}={v}" for k, v in sorted(os.environ.items())
             if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]
    return ", ".join(found) or "glibc defaults"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn: Callable[[], object], device: torch.device) -> Dict[str, float]:
    """One call of ``fn``: wall seconds, CPU seconds of this process (all its threads) and
    minor page faults."""
    synchronize(device)
    wall, cpu, faults = time.perf_counter(), time.process_time(), minor_faults()
    fn()
    synchronize(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "faults": minor_faults() - faults}


def median(samples: Sequence[Dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null (the profiler's native library prints start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], object]) -> float:
    """Highest total of live bytes allocated through PyTorch's CPU allocator while ``fn`` runs,
    counting only what ``fn`` allocates (torch.profiler memory events, replayed in time order);
    NaN where this torch's profiler does not expose its raw events."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        raw = prof.profiler.kineto_results.events()
    except AttributeError:
        return math.nan
    events = [e for e in raw
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call of ``fn`` above what was allocated before it (see module doc)."""
    if device.type != "cuda":
        return cpu_peak_bytes(fn)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def tensor_bytes(*collections: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages of the given tensors."""
    seen: Dict[int, int] = {}
    for tensors in collections:
        for t in tensors:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resting_bytes(net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights, buffers (MoCo queue, BN statistics) and optimizer state."""
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return tensor_bytes(list(net.parameters()), list(net.buffers()), state)


def conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation,
                        transposed, output_padding, groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """``convolution_backward``: the input and the weight gradient each cost the forward's
    multiply-adds. (torch's own formula ignores ``groups`` for the weight gradient, which
    counts the dynamic depthwise convolutions B*C times too high.)"""
    spatial = x_shape[2:] if transposed else grad_out_shape[2:]
    forward = 2 * x_shape[0] * math.prod(w_shape) * math.prod(spatial)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the convolutions and matrix products ``fn`` runs."""
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: conv_backward_flops})
    with counter:
        fn()
    return counter.get_total_flops()


GEMM_IMPLEMENTATIONS = ("mm", "conv1x1")


def matmul_call(kind: str, device: torch.device, side: int = MATMUL_SIDE,
                implementation: str = "mm") -> Callable[[], object]:
    """A call that multiplies two side x side matrices of ``kind``'s dtype, with ``torch.mm``
    (BLAS: MKL, cuBLAS) or as a 1x1 convolution (oneDNN, cuDNN), TF32 allowed only for 'tf32'
    on CUDA. The operands are made once."""
    dtype = MATMUL_DTYPE[kind]
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    if implementation == "conv1x1":                  # (1, side channels, side pixels) x weight
        a = a.T.contiguous().view(1, side, 32, side // 32)
        b = b.T.contiguous().view(side, side, 1, 1)

    def run() -> torch.Tensor:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        tf32 = device.type == "cuda" and kind == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            return a @ b if implementation == "mm" else torch.nn.functional.conv2d(a, b)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return run


def matmul_gflops(seconds: float, side: int = MATMUL_SIDE) -> float:
    return 2 * side ** 3 / seconds / 1e9


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[k].upper() if k == "model" else row[k])
                                      for (_, fmt), k in zip(columns, keys)) + " |")
    return "\n".join(lines)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
