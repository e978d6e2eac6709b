"""Parameters and multiply-accumulates of every registered model (the README's ablation table).

    python scripts/model_complexity.py [--scale 4] [--lr_size 64] [--models cdsr,cdsr-no-patch]

Paper widths. Parameters: those an evaluation forward uses (the encoder and the generator;
MoCo's key encoder, a momentum copy of the query encoder used only in training, is left out;
KDSR's MeanShift is a constant). A KDSR teacher's embedding also reads an HR image. GMACs: multiply-accumulates of one evaluation forward (embedding + SR) of a single
LR image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, which carry all but a negligible share of the arithmetic; 1 MAC = 2 FLOPs).
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import build_model, model_names  # noqa: E402


def count_macs(forward: Callable[[], object]) -> int:
    """Multiply-accumulates of ``forward()`` (convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() // 2


def inference_parameters(model: nn.Module) -> Dict[str, int]:
    """{'encoder': (query) encoder, 'generator', 'total'}: parameter counts of the eval forward."""
    encoder_module = getattr(model.encoder, "query_encoder", model.encoder)   # MoCo or not
    encoder = sum(p.numel() for p in encoder_module.parameters())
    generator = sum(p.numel() for p in model.generator.parameters())
    return {"encoder": encoder, "generator": generator, "total": encoder + generator}


@torch.no_grad()
def complexity(name: str, scale: int, lr_size: int) -> Dict[str, float]:
    """Parameters and GMACs (one lr_size x lr_size LR image) of the paper-size ``name``."""
    model = build_model(name, scale=scale).eval()
    lr = torch.rand(1, 3, lr_size, lr_size) * 255
    hr = (torch.rand(1, 3, scale * lr_size, scale * lr_size) * 255,) if model.needs_hr else ()
    embedding = model.embed(lr, *hr)
    encoder = count_macs(lambda: model.embed(lr, *hr))
    generator = count_macs(lambda: model.super_resolve(lr, embedding))
    return {**inference_parameters(model), "encoder_gmacs": encoder / 1e9,
            "gmacs": (encoder + generator) / 1e9}


def markdown(rows: Dict[str, Dict[str, float]], scale: int, lr_size: int) -> str:
    lines = [f"| model | parameters (encoder + generator) | GMACs ({lr_size}x{lr_size} LR, x{scale}) "
             "| of which the encoder |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| `{name}` | {r['total'] / 1e6:.2f} M ({r['encoder'] / 1e6:.2f} M + "
                     f"{r['generator'] / 1e6:.2f} M) | {r['gmacs']:.1f} | {r['encoder_gmacs']:.2f} |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    parser.add_argument("--lr_size", type=int, default=64)
    parser.add_argument("--models", default=",".join(model_names()),
                        help="comma-separated registered names")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {name: complexity(name, args.scale, args.lr_size) for name in args.models.split(",")}
    print(markdown(rows, args.scale, args.lr_size))


if __name__ == "__main__":
    main()
