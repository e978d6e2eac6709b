"""Joint training step of CDSR and DASR in every precision of the device, measured side by side.

    python scripts/bench_train.py [--models cdsr,dasr] [--precisions fp32,bf16] [--batch_size 4]
        [--patch_size 48] [--scale 4] [--iterations 5] [--warmup 1] [--threads N]
        [--device cpu|cuda] [--eval_size 128] [--ema_decay D] [--json OUT.json]

For each model (the paper recipe of its preset, x4, LR patch 48) and each precision, one joint
training step is what the trainer does per iteration: ``TrainingDegradation.apply`` on a batch
of HR patch pairs (parameters drawn beforehand, as the data-loading workers do) and
``model.training.training_step`` (MoCo update, forward under the precision's autocast, losses,
backward, Adam). Every precision trains its own copy of the same initial model on the same
batches, and the copies take turns (round 1: A, B, C; round 2: B, C, A; ...), so load drift on a
shared machine hits all modes alike and the losses of the same step can be compared.

Reported per model and precision: median and fastest milliseconds per step (wall clock; on a
shared virtual machine other guests can stall a step for seconds, the fastest step is the
least disturbed; ``--json`` adds the CPU time and every sample), items (training images) per
second, the step's peak memory above the resting state (weights, Adam moments, MoCo queue;
gradients are freed before every step), the model's FLOPs per step
(``torch.utils.flop_counter.FlopCounterMode`` over forward and backward: convolutions and
matrix products), the achieved GFLOP/s (median step) and its fraction of the machine's GEMM
rate in the same dtype (a 2048^3 matrix product timed in the same rounds, median, the faster of
``torch.mm`` and the same product as a 1x1 convolution: on AMD CPUs MKL's float32 GEMM reaches
about 60% of oneDNN's, which runs the convolutions), the ratios to fp32, and the largest
relative difference of the step losses from fp32's.

Peak memory. CUDA: ``max_memory_allocated`` minus what was allocated before the step. CPU: the
highest total of live tensor bytes allocated through PyTorch's CPU allocator during the step,
from ``torch.profiler``'s memory events (oneDNN's scratch memory included), in a separate,
untimed step; independent of how glibc keeps or returns freed pages.

With ``--ema_decay D`` every precision also runs as ``<precision>+ema``: the same step followed
by the update of a moving average of the weights (``model.ema.WeightEMA``, what main.py
--ema_decay does after every step), in the same rounds; the column "vs no EMA" is its step time over
the same precision's without (on a busy machine the noise of whole steps can exceed the
update), "EMA update ms" the median time of the update alone (timed inside the step) and
"update / step" its share of the plain step; its resting memory includes the average's copy of
the weights, and its losses equal the plain mode's (the average does not change training).

Precisions: CPU fp32 and bf16 (``tf32`` is fp32 on a CPU); fp16 only if the CPU has native
float16 arithmetic (its matmul rate is probed; emulated fp16 runs 20-100x slower) or when
listed in ``--precisions``. CUDA: fp32, tf32, bf16, fp16, and the evaluation forward
(``predict``, true float32) at ``--eval_size``. Prints one table; ``--json`` writes the rows.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch: no profiler chatter on stderr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import option  # noqa: E402
from data import build_training_degradation  # noqa: E402
from loss import build_loss  # noqa: E402
from model import make_model  # noqa: E402
from model.ema import WeightEMA  # noqa: E402
from model.inference import predict  # noqa: E402
from model.precision import PRECISIONS, Precision  # noqa: E402
from model.training import JOINT, build_phases, make_optimizer, set_trainable, training_step  # noqa: E402

from scripts.measure import (GEMM_IMPLEMENTATIONS, MiB, add_workload_flags,  # noqa: E402
                             allocator_settings, count_flops, describe_device, host_load,
                             markdown_table, matmul_call, matmul_gflops, median, peak_bytes,
                             resting_bytes, tensor_bytes, timed)


def default_precisions(device: torch.device) -> List[str]:
    """Every precision on CUDA; fp32 and bf16 on a CPU, plus fp16 where the CPU computes in
    float16 natively (probed: a float16 matmul at least half as fast as a float32 one)."""
    if device.type == "cuda":
        return list(PRECISIONS)
    chosen = ["fp32", "bf16"]
    probe = {kind: min(timed(matmul_call(kind, device, 512), device)["wall"] for _ in range(3))
             for kind in ("fp32", "fp16")}
    if probe["fp16"] <= 2 * probe["fp32"]:
        chosen.append("fp16")
    else:
        print(f"fp16 left out: this CPU emulates float16 (a 512x512 float16 matmul takes "
              f"{probe['fp16'] / probe['fp32']:.0f}x as long as float32); list it in "
              "--precisions to run it anyway")
    return chosen


# ----------------------------------------------------------------------------- the benchmark
class Mode:
    """One precision's copy of the model, its optimizer and its measurements; with
    ``ema_decay`` also a moving average of its weights, updated after every applied step."""

    def __init__(self, precision: str, base: torch.nn.Module, phase, lr: float,
                 device: torch.device, ema_decay: float = 0.0):
        self.name = precision + ("+ema" if ema_decay else "")
        self.kind = precision
        self.net = copy.deepcopy(base)
        set_trainable(self.net, phase)
        self.optimizer = make_optimizer(self.net, lr)
        self.ema = WeightEMA(self.net, ema_decay) if ema_decay else None
        self.ema_samples: List[Dict[str, float]] = []         # the updates alone
        self.precision = Precision(precision, device)
        self.samples: List[Dict[str, float]] = []
        self.losses: List[Dict[str, float]] = []


def draw_batches(args: argparse.Namespace, degradation, count: int, device: torch.device) -> list:
    """``count`` batches (hr (B,2,3,P,P) 0..255, degradation parameters, noise maps), seeded."""
    side = args.patch_size * args.scale
    lr_shape = (args.batch_size, 2, 3, args.patch_size, args.patch_size)
    batches = []
    for i in range(count):
        generator = torch.Generator().manual_seed(1000 + i)
        hr = (torch.rand(args.batch_size, 2, 3, side, side, generator=generator) * 255).round()
        params = degradation.sample(args.batch_size, generator)
        noise = degradation.noise_maps(params["noise"], lr_shape, generator)
        batches.append((hr.to(device), params, None if noise is None else noise.to(device)))
    return batches


def bench_model(name: str, opts: argparse.Namespace, device: torch.device) -> List[dict]:
    args = option.parse_args(["--preset", name, "--scale", str(opts.scale),
                              "--batch_size", str(opts.batch_size),
                              "--patch_size", str(opts.patch_size)])
    torch.manual_seed(0)
    base = make_model(args).to(device)
    phase = next(p for p in build_phases(args) if p.name == JOINT)
    criterion = build_loss(args.loss, args.c_weight).to(device)
    degradation = build_training_degradation(args)
    modes = [Mode(p, base, phase, phase.base_lr, device, decay) for p in opts.precisions
             for decay in ((0.0, opts.ema_decay) if opts.ema_decay else (0.0,))]
    matmuls = {(kind, how): matmul_call(kind, device, implementation=how)
               for kind in {m.kind for m in modes} for how in GEMM_IMPLEMENTATIONS}
    matmul_samples: Dict[tuple, List[Dict[str, float]]] = {key: [] for key in matmuls}
    rounds = opts.warmup + opts.iterations
    batches = draw_batches(args, degradation, rounds + 2, device)

    def step(mode: Mode, batch) -> Callable[[], None]:
        hr, params, noise = batch

        def run() -> None:
            mode.precision.activate()
            lr = degradation.apply(hr, params, noise)
            result = training_step(mode.net, lr, hr[:, 0], phase, criterion, mode.optimizer,
                                   precision=mode.precision)
            if mode.ema is not None and result.applied:
                mode.ema_samples.append(timed(lambda: mode.ema.update(mode.net), device))
            mode.losses.append(result.reported)
        return run

    for r in range(rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            sample = timed(step(mode, batches[r]), device)
            if r >= opts.warmup:
                mode.samples.append(sample)
        for kind, run in matmuls.items():
            sample = timed(run, device)
            if r >= opts.warmup:
                matmul_samples[kind].append(sample)
        print(f"  {name} round {r + 1}/{rounds}: " + ", ".join(
            f"{m.name} {1000 * m.samples[-1]['wall']:.0f} ms" for m in modes if m.samples)
            + (" (warm-up)" if r < opts.warmup else ""), flush=True)

    fp32 = next((m for m in modes if m.name == "fp32"), modes[0])
    hr, params, noise = batches[rounds]
    lr = degradation.apply(hr, params, noise)                   # the model's FLOPs only
    flops = count_flops(lambda: training_step(fp32.net, lr, hr[:, 0], phase, criterion,
                                              fp32.optimizer, precision=fp32.precision))
    rows = []
    for mode in modes:
        mode.optimizer.zero_grad(set_to_none=True)
        resting = resting_bytes(mode.net, mode.optimizer)
        if mode.ema is not None:
            resting += tensor_bytes(mode.ema.tensors())
        peak = peak_bytes(step(mode, batches[rounds + 1]), device)
        wall = median(mode.samples, "wall")
        gemm = {how: matmul_gflops(median(matmul_samples[mode.kind, how], "wall"))
                for how in GEMM_IMPLEMENTATIONS}
        matmul_rate = max(gemm.values())
        rows.append({
            "model": name, "precision": mode.name, "device": device.type,
            "batch_size": opts.batch_size, "patch_size": opts.patch_size, "scale": opts.scale,
            "ms_per_step": 1000 * wall, "cpu_ms_per_step": 1000 * median(mode.samples, "cpu"),
            "min_ms_per_step": 1000 * min(s["wall"] for s in mode.samples),
            "samples_ms": [round(1000 * s["wall"], 1) for s in mode.samples],
            "items_per_s": opts.batch_size / wall, "step_peak_mib": peak / MiB,
            "resting_mib": resting / MiB, "gflop_per_step": flops / 1e9,
            "gflops": flops / 1e9 / wall, "matmul_gflops": matmul_rate,
            **{f"{how}_gflops": rate for how, rate in gemm.items()},
            "matmul_fraction": flops / 1e9 / wall / matmul_rate,
            "losses": mode.losses[:rounds],
            "ema_update_ms": 1000 * median(mode.ema_samples, "wall") if mode.ema_samples else 0.0,
        })
    reference = next((r for r in rows if r["precision"] == "fp32"), rows[0])
    plain = {r["precision"]: r for r in rows}
    for row in rows:
        row["time_vs_fp32"] = row["ms_per_step"] / reference["ms_per_step"]
        without = plain[row["precision"].split("+")[0]]          # the same precision, no EMA
        row["time_vs_no_ema"] = row["ms_per_step"] / without["ms_per_step"]
        row["resting_vs_no_ema"] = row["resting_mib"] / without["resting_mib"]
        row["update_share"] = row["ema_update_ms"] / without["ms_per_step"]
        row["memory_vs_fp32"] = row["step_peak_mib"] / reference["step_peak_mib"]
        row["loss_rel_diff"] = max_relative_difference(row["losses"], reference["losses"])
    return rows


def max_relative_difference(losses: List[Dict[str, float]],
                            reference: List[Dict[str, float]]) -> float:
    """Largest |loss - reference| / |reference| over the steps and loss components."""
    return max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-12)
                for a, b in zip(losses, reference) for k in b), default=0.0)


def bench_eval(name: str, opts: argparse.Namespace, device: torch.device) -> dict:
    """CUDA only: the evaluation forward (``predict``, true float32) on one LR image."""
    torch.manual_seed(0)
    net = make_model(argparse.Namespace(model=name, scale=opts.scale, queue_size=8192))
    net = net.to(device).eval()
    lr = (torch.rand(1, 3, opts.eval_size, opts.eval_size, device=device) * 255).round()

    def forward() -> None:
        with torch.no_grad():
            predict(net, lr)
    samples = [timed(forward, device) for _ in range(opts.warmup + opts.iterations)][opts.warmup:]
    return {"model": name, "eval_size": opts.eval_size, "ms": 1000 * median(samples, "wall"),
            "peak_mib": peak_bytes(forward, device) / MiB}


# ----------------------------------------------------------------------------- report
COLUMNS = (("model", "{}"), ("precision", "{}"), ("ms/step", "{:.0f}"), ("fastest ms", "{:.0f}"),
           ("items/s", "{:.2f}"), ("time vs fp32", "{:.2f}"), ("step peak MiB", "{:.0f}"),
           ("memory vs fp32", "{:.2f}"), ("GFLOP/step", "{:.0f}"), ("GFLOP/s", "{:.1f}"),
           ("GEMM GFLOP/s", "{:.1f}"), ("of GEMM", "{:.0%}"), ("loss diff vs fp32", "{:.1e}"))
KEYS = ("model", "precision", "ms_per_step", "min_ms_per_step", "items_per_s", "time_vs_fp32",
        "step_peak_mib", "memory_vs_fp32", "gflop_per_step", "gflops", "matmul_gflops",
        "matmul_fraction", "loss_rel_diff")
EMA_COLUMNS = (("vs no EMA", "{:.3f}"), ("EMA update ms", "{:.1f}"), ("update / step", "{:.2%}"),
               ("resting MiB", "{:.0f}"), ("resting vs no EMA", "{:.2f}"))
EMA_KEYS = ("time_vs_no_ema", "ema_update_ms", "update_share", "resting_mib", "resting_vs_no_ema")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cdsr,dasr", help="comma-separated: cdsr, dasr")
    p.add_argument("--precisions", default=None,
                   help=f"comma-separated subset of {', '.join(PRECISIONS)} (default: those the "
                        "device computes natively, see above)")
    add_workload_flags(p, iterations=5, iterations_help="timed rounds (every mode once each)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--eval_size", type=int, default=128, help="CUDA: LR side of the eval forward")
    p.add_argument("--ema_decay", type=float, default=0.0,
                   help="also time every precision with a moving average of the weights updated "
                        "after each step (main.py --ema_decay), as '<precision>+ema'; 0: not")
    p.add_argument("--json", default=None, help="also write the measurements to this file")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if opts.precisions:
        opts.precisions = opts.precisions.split(",")
        unknown = sorted(set(opts.precisions) - set(PRECISIONS))
        if unknown:
            print(f"error: unknown precision(s) {unknown}; choose from {', '.join(PRECISIONS)}",
                  file=sys.stderr)
            return 2
    else:
        opts.precisions = default_precisions(device)
    load_before = host_load()
    print(f"torch {torch.__version__}, {describe_device(device)}; joint training step, "
          f"x{opts.scale}, batch {opts.batch_size}, LR patch {opts.patch_size}, "
          f"{opts.iterations} timed rounds after {opts.warmup} warm-up; host load {load_before}; "
          f"malloc: {allocator_settings()}", flush=True)
    rows, evals = [], []
    for name in opts.models.split(","):
        rows += bench_model(name, opts, device)
        if device.type == "cuda":
            evals.append(bench_eval(name, opts, device))
    print(f"\nhost load before {load_before}, after {host_load()}")
    columns, keys = COLUMNS, KEYS
    if opts.ema_decay:
        columns += EMA_COLUMNS
        keys += EMA_KEYS
    print(markdown_table(rows, columns, keys))
    if evals:
        print(f"\neval forward (predict, true float32), LR {opts.eval_size}x{opts.eval_size}:")
        for e in evals:
            print(f"  {e['model'].upper()}: {e['ms']:.1f} ms, peak {e['peak_mib']:.0f} MiB")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"host_load": [load_before, host_load()],
                                               "malloc": allocator_settings(),
                                               "device": describe_device(device),
                                               "train": rows, "eval": evals}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
