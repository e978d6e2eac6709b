"""CUDA checks a CPU machine cannot make: the authors' numbers on the GPU, CPU/GPU agreement of
the batched training degradation, and paper-size training speed and memory.

    python scripts/check_cuda.py [--golden ../shared/golden] [--iterations 20]

1. Golden models: every ``{cdsr,dasr}_x{s}`` case of ``--golden`` (see verify_golden.py) on the
   GPU against the authors' float32 outputs and the checker's tolerance: the bare forward with
   TF32 allowed (PyTorch's default for cuDNN convolutions), and ``predict``, our inference path,
   which must pass with TF32 allowed around it.
2. Degradation: the same seeded training batch degraded on the CPU and on the GPU, both
   conventions, with and without noise: the rounded LR may differ by one grey level where a
   value sits on a rounding boundary.
3. Speed: joint-phase training steps at the paper recipes' sizes (x4, batch 32, LR patch 48),
   TF32 off and on: the whole step (degradation + forward + backward + Adam) and the
   degradation alone, seconds per iteration and peak GPU memory.
"""
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import option  # noqa: E402
from data import build_training_degradation  # noqa: E402
from loss import build_loss  # noqa: E402
from model import make_model  # noqa: E402
from model.inference import full_float32, predict  # noqa: E402
from model.training import JOINT, build_phases, make_optimizer, set_trainable, training_step  # noqa: E402


def set_tf32(enabled: bool) -> None:
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def check_golden_models(golden_dir: Path, device: torch.device) -> bool:
    from scripts.golden.models import F32_OUT_RTOL, F32_VECTOR_ATOL, golden_input, golden_model, model_cases

    ok = True
    set_tf32(True)
    for name, scale in model_cases(golden_dir):
        net = copy.deepcopy(golden_model(golden_dir, name, scale)).to(device)
        x = golden_input(golden_dir, name, scale).to(device)
        ref_out = np.load(golden_dir / f"{name}_x{scale}_out.npy")
        ref_embedding = np.load(golden_dir / f"{name}_x{scale}_embedding.npy")
        with torch.no_grad():
            bare = net(x).cpu().numpy()
            out = predict(net, x).cpu().numpy()
            with full_float32():
                embedding = net.embed(x).cpu().numpy()
        relative = lambda y: np.abs(y - ref_out).max() / np.abs(ref_out).max()  # noqa: E731
        embedding_error = np.abs(embedding - ref_embedding).max()
        passed = relative(out) <= F32_OUT_RTOL and embedding_error <= F32_VECTOR_ATOL
        ok &= passed
        print(f"golden {name}_x{scale}: predict {relative(out):.2e} x max (tolerance {F32_OUT_RTOL:g}), "
              f"embedding {embedding_error:.2e} (tolerance {F32_VECTOR_ATOL:g}) "
              f"{'pass' if passed else 'FAIL'}; bare forward with TF32 {relative(bare):.2e} x max")
    return ok


def check_degradation(device: torch.device) -> bool:
    hr = torch.rand(8, 2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255
    ok = True
    for preset, noise in (("demo", 0), ("demo", 10), ("cdsr", 0), ("cdsr", 10)):
        args = option.parse_args(["--preset", preset, "--scale", "4", "--noise", str(noise)])
        degrade = build_training_degradation(args)
        on_cpu = degrade(hr, torch.Generator().manual_seed(1))
        on_gpu = degrade(hr.to(device), torch.Generator().manual_seed(1)).cpu()
        difference = (on_cpu - on_gpu).abs()
        ok &= difference.max().item() <= 1
        print(f"degradation {args.degradation} {args.blur_type} noise {noise}: max |CPU - GPU| "
              f"{difference.max().item():g} grey levels, {(difference > 0).sum().item()} of "
              f"{difference.numel()} LR values differ")
    return ok


def timed(step, iterations: int) -> tuple[float, float]:
    """(seconds per call, peak GiB allocated) of ``step`` after 3 warm-up calls."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations, torch.cuda.max_memory_allocated() / 2 ** 30


def measure_training_speed(name: str, device: torch.device, iterations: int) -> None:
    args = option.parse_args(["--preset", name, "--scale", "4"])
    net = make_model(args).to(device)
    phase = next(p for p in build_phases(args) if p.name == JOINT)
    set_trainable(net, phase)
    optimizer = make_optimizer(net, phase.base_lr)
    criterion = build_loss(args.loss, args.c_weight).to(device)
    degrade = build_training_degradation(args)
    side = args.patch_size * args.scale
    hr = torch.rand(args.batch_size, 2, 3, side, side, device=device) * 255
    rng = torch.Generator().manual_seed(0)
    step_s, step_gib = timed(lambda: training_step(net, degrade(hr, rng), hr[:, 0], phase, criterion,
                                                   optimizer), iterations)
    degrade_s, degrade_gib = timed(lambda: degrade(hr, rng), iterations)
    print(f"speed {args.model} x4 joint, batch {args.batch_size}, LR patch {args.patch_size}, "
          f"TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}: {step_s:.3f} s/it "
          f"({args.batch_size / step_s:.0f} patches/s), peak {step_gib:.2f} GiB; degradation alone "
          f"{degrade_s * 1000:.1f} ms, peak {degrade_gib:.2f} GiB")


def main() -> int:
    parser = option.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golden", type=Path, default=ROOT.parent / "shared" / "golden",
                        help="folder of golden vectors (default: ../shared/golden)")
    parser.add_argument("--iterations", type=int, default=20, help="timed training steps per model")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device is visible; run this on a machine with a GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device)}")
    ok = check_golden_models(args.golden, device) if args.golden.is_dir() else True
    ok &= check_degradation(device)
    for name in ("cdsr", "dasr"):
        for tf32 in (False, True):
            set_tf32(tf32)
            measure_training_speed(name, device, args.iterations)
            torch.cuda.empty_cache()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
