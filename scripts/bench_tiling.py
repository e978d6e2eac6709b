"""Inference policies (tiled, bf16) vs the untiled fp32 forward: max |difference|, PSNR, memory.

    python scripts/bench_tiling.py [--models cdsr,dasr] [--variants untiled,tiled,...] [--size 512]
        [--scale 4] [--tile 128] [--overlap 32] [--embed_crop 512] [--device cpu|cuda]
        [--pre_train_cdsr CKPT] [--pre_train_dasr CKPT] [--json OUT.json]

The LR input is scikit-image's 512x512 ``astronaut`` photo (resized when --size differs). Per
model the variants are: ``untiled`` (the authors' eval forward), ``tiled`` (embedding once on
the whole image or its centred --embed_crop square, SR network per tile with --overlap context;
CDSR's DQA layers then pool over each tile), DASR ``tiled-exact`` (overlap = its receptive
radius, 109 LR px at paper size) and CDSR ``faithful`` (tiles that keep every DQA's whole-image
mean) and ``bf16`` (the whole image under bfloat16 autocast, as ``test.py --input --bf16``).
Differences are against the first variant run (``untiled`` by default) on the
unclamped float outputs (0..255 units); PSNR is over RGB after clamping to 0..255 (no
rounding), peak 255; the 8-bit columns compare the outputs as test.py writes them (rounded).

Memory. CUDA: ``torch.cuda.max_memory_allocated`` during the forward, minus what was allocated
before (weights and input). CPU: each variant runs in its own process (so peaks don't mix); the
resident peak is reset just before the forward (``/proc/self/clear_refs``; ``getrusage`` alone
would start from the parent's peak) and the process reports its resident peak (VmHWM) and that
peak minus the resident size just before the forward. Random weights (``torch.manual_seed(0)``) unless checkpoints are given; DQA's
attention weight ``gamma`` starts at 0, which would make CDSR ignore the pooled means, so random
CDSR weights get ``gamma = 1`` (trained models have gamma != 0).
"""
import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import build_model  # noqa: E402
from model.checkpoint import load_weights  # noqa: E402
from model.inference import predict  # noqa: E402
from option import ArgumentParser  # noqa: E402

# Paper-size DASR generator, LR pixels: head conv 1 + 5 groups x (5 blocks x 4 + 1) convs +
# body conv 1 + upsampler convs 1 (LR) + 1/2 (x2) + tail conv 1/4 (x4) = 108.75.
RECEPTIVE_RADIUS = {"dasr": 109}


def variants(model_name: str, overlap: int) -> Dict[str, dict]:
    """Variant name -> keyword arguments of ``predict`` (tile filled in later)."""
    out = {"untiled": {}, "tiled": {"overlap": overlap}, "bf16": {"bf16": True}}
    if model_name == "dasr":
        out["tiled-exact"] = {"overlap": RECEPTIVE_RADIUS["dasr"]}
    else:
        out["faithful"] = {"overlap": 0, "global_stats": True}
    return out


def make_model(name: str, scale: int, checkpoint: Optional[str], device: torch.device):
    torch.manual_seed(0)
    model = build_model(name, scale=scale)
    if checkpoint:
        load_weights(model, checkpoint)
    else:
        for module in model.modules():
            if hasattr(module, "gamma"):
                module.gamma.data.fill_(1.0)
    return model.to(device).eval()


def make_input(size: int) -> torch.Tensor:
    """(1,3,size,size) float 0..255: scikit-image's astronaut."""
    from skimage import data
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    if size != image.shape[-1]:
        image = torch.nn.functional.interpolate(image, size=(size, size), mode="bicubic",
                                                align_corners=False).clamp(0, 255).round()
    return image


def memory_status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (resident peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> bool:
    """Set this process's resident peak (VmHWM) to its current size (Linux >= 4.0).

    Needed because ``getrusage``'s ru_maxrss of a spawned process starts at its parent's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def is_tiled(policy: dict) -> bool:
    return "overlap" in policy


def run_variant(args: argparse.Namespace, name: str, policy: dict, out_path: Optional[Path]) -> dict:
    """One forward of one variant in this process; returns its measurements."""
    device = torch.device(args.device)
    model = make_model(name, args.scale, getattr(args, f"pre_train_{name}"), device)
    lr = make_input(args.size).to(device)
    tile = args.tile if is_tiled(policy) else None
    if tile:
        policy = {**policy, "embed_crop": args.embed_crop or None}
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            exact_peak = reset_peak_rss()
            before = memory_status_mib("VmRSS")
        start = time.perf_counter()
        sr = predict(model, lr, tile=tile, **policy)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
        record = {"peak_mib": peak, "forward_mib": peak - before / 2 ** 20}
    else:
        peak = (memory_status_mib("VmHWM") if exact_peak
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        record = {"peak_mib": peak, "forward_mib": peak - before, "peak_reset": exact_peak}
    record["seconds"] = seconds
    if out_path is not None:
        np.save(out_path, sr.float().cpu().numpy())
    record["output"] = sr.float().cpu() if out_path is None else None
    return record


def compare(sr: torch.Tensor, reference: torch.Tensor) -> dict:
    diff = (sr - reference).abs().max().item()
    mse = ((sr.clamp(0, 255) - reference.clamp(0, 255)) ** 2).mean().item()
    grey = (sr.clamp(0, 255).round() - reference.clamp(0, 255).round()).abs()
    return {"max_abs_diff": diff, "psnr_db": math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse),
            "max_grey_levels": grey.max().item(), "share_changed": (grey > 0).float().mean().item()}


def measure(args: argparse.Namespace) -> List[dict]:
    rows = []
    for name in args.models.split(","):
        reference = None
        chosen = variants(name, args.overlap)
        wanted = args.variants.split(",") if args.variants else [k for k in chosen if k != "bf16"]
        chosen = {k: v for k, v in chosen.items() if k in wanted}
        for variant, policy in chosen.items():
            if args.device == "cpu":   # a fresh process per variant: its own peak RSS
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "sr.npy"
                    command = [sys.executable, __file__, "--worker", f"{name}:{variant}",
                               "--worker_out", str(out)] + args.forward_argv
                    done = subprocess.run(command, capture_output=True, text=True, check=True)
                    record = json.loads(done.stdout.strip().splitlines()[-1])
                    sr = torch.from_numpy(np.load(out))
            else:
                record = run_variant(args, name, policy, None)
                sr = record.pop("output")
            record.pop("output", None)
            reference = sr if reference is None else reference   # the first variant run
            record.update(compare(sr, reference), model=name, variant=variant,
                          overlap=policy.get("overlap"), tile=args.tile if is_tiled(policy) else None,
                          bf16=bool(policy.get("bf16")))
            rows.append(record)
            print(format_row(record), flush=True)
    return rows


def format_row(r: dict) -> str:
    return (f"| {r['model'].upper()} | {r['variant']} | {r['tile'] or '-'} | "
            f"{'-' if r['overlap'] is None else r['overlap']} | {r['max_abs_diff']:.3g} | "
            f"{r['psnr_db']:.2f} | {r['max_grey_levels']:.0f} ({100 * r['share_changed']:.1f}%) | "
            f"{r['peak_mib']:.0f} | {r['forward_mib']:.0f} | {r['seconds']:.1f} |")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="cdsr,dasr", help="comma-separated: cdsr, dasr")
    p.add_argument("--size", type=int, default=512, help="LR side (pixels)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--tile", type=int, default=128, help="LR tile side")
    p.add_argument("--overlap", type=int, default=32, help="LR context of the 'tiled' variant")
    p.add_argument("--embed_crop", type=int, default=512,
                   help="tiled variants: LR side of the centred crop the embedding is estimated "
                        "on (0 = whole image), as test.py --embed_crop")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of untiled, tiled, tiled-exact (DASR), faithful "
                        "(CDSR), bf16; differences are against the first one run (default: all but bf16, "
                        "which CPUs without bfloat16 kernels run 30-300x slower)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--pre_train_cdsr", default=None, help="CDSR checkpoint (default: random weights)")
    p.add_argument("--pre_train_dasr", default=None, help="DASR checkpoint (default: random weights)")
    p.add_argument("--json", default=None, help="also write the measurements to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        name, variant = args.worker.split(":")
        record = run_variant(args, name, variants(name, args.overlap)[variant], Path(args.worker_out))
        record.pop("output")
        print(json.dumps(record))
        return 0
    args.forward_argv = [a for a in argv]
    print(f"LR {args.size}x{args.size} x{args.scale} on {args.device}, "
          f"{torch.get_num_threads()} threads")
    print("| model | variant | tile | overlap | max abs diff | PSNR vs untiled (dB) | 8-bit max diff "
          "(pixels changed) | peak (MiB) | forward (MiB) | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
