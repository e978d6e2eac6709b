"""What did a degradation encoder learn: the degradation, the image content, or both?

    python scripts/analyze_embedding.py CKPT --out DIR [--hr_dir DIR] [--scale S] [--untrained]

Embeds every (HR image x degradation) pair of a seeded grid (default: the photos bundled with
scikit-image/matplotlib x 4 isotropic and 4 anisotropic kernels x noise 0, 10, 20) with the
checkpoint's query encoder (ours or the authors' file, any registered model) and writes into DIR:

* ``embedding.json``: the shares of the embedding's variance explained by the degradation, by
  the image and by their interaction (two-way decomposition over the grid); the cross-validated
  accuracy of linear probes that predict the kernel class (on held-out images) and the image
  (on held-out degradations), with chance levels; for an encoder with a CSC codebook, its usage
  (attention mass per row, entropy, rows carrying 90% of the mass);
* ``embedding_by_degradation.png``, ``embedding_by_image.png``: PCA of the embeddings coloured
  by kernel (shape: noise level) and by image; ``codebook_usage.png`` with a codebook;

and prints the numbers as a short table. ``--untrained`` analyses the same architecture with
freshly initialised weights (seeded by ``--seed``), the baseline for a trained encoder.
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utility  # noqa: E402
from option import ArgumentParser  # noqa: E402
from model import build_model  # noqa: E402
from model.checkpoint import checkpoint_identity, load_model, read_checkpoint  # noqa: E402
from scripts.embedding.analysis import analyse, table, write_outputs  # noqa: E402
from scripts.embedding.grid import (DEFAULT_LR_SIZE, DEFAULT_NOISE, default_kernels,  # noqa: E402
                                    grid_degradations, load_images)

# The degradation convention of an authors' checkpoint: what their training code used.
AUTHORS_CONVENTION = {"cdsr": "manet", "dasr": "dasr"}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="checkpoint (ours or the authors')")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and figures")
    parser.add_argument("--hr_dir", type=Path, default=None,
                        help="folder of HR images (default: the photos bundled with "
                             "scikit-image/matplotlib)")
    parser.add_argument("--scale", type=int, default=None, choices=(2, 3, 4),
                        help="downsampling factor of the grid (default: the checkpoint's)")
    parser.add_argument("--degradation", choices=("dasr", "manet"), default=None,
                        help="degradation convention (default: the checkpoint's training "
                             "convention; the authors' CDSR: manet, DASR: dasr)")
    parser.add_argument("--noise", type=float, nargs="+", default=list(DEFAULT_NOISE),
                        help="noise levels of the grid (0..255 units)")
    parser.add_argument("--lr_size", type=int, default=DEFAULT_LR_SIZE,
                        help="LR side of the centre crops that are embedded")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the probes")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the grid's noise (and of --untrained weights)")
    parser.add_argument("--untrained", action="store_true",
                        help="the checkpoint's architecture with fresh weights (a baseline)")
    return parser


def load_encoder_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str, str]:
    """(model in eval mode, checkpoint format, degradation convention) of CKPT."""
    checkpoint = read_checkpoint(args.checkpoint)
    fmt, name, scale = checkpoint_identity(checkpoint, str(args.checkpoint))
    if fmt == "ours":
        convention = (checkpoint.get("config") or {}).get("degradation", "dasr")
    else:
        convention = AUTHORS_CONVENTION[name]
    torch.manual_seed(args.seed)
    if args.untrained:                  # the architecture alone, with fresh weights
        kwargs = dict(checkpoint.get("model_kwargs") or {}) if fmt == "ours" else {}
        model = build_model(name, scale=scale, **kwargs).eval()
    else:
        model = load_model(checkpoint)
    return model, fmt, args.degradation or convention


def codebook_attention(model: torch.nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """LR (B,3,h,w) 0..255 -> (B,K) CSC attention of the query encoder, or None without one."""
    encoder = model.encoder.query_encoder
    if getattr(encoder, "codebook", None) is None:
        return None
    return lambda lr: encoder.codebook.attention(encoder.fused_features(model.to_network_range(lr)))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    model, fmt, convention = load_encoder_model(args)
    scale = args.scale or model.scale
    if args.lr_size < model.min_input_size:
        raise ValueError(f"--lr_size {args.lr_size} is below what {model.name.upper()}'s encoder "
                         f"reads ({model.min_input_size})")
    images = load_images(args.hr_dir, args.lr_size * scale)
    degradations = grid_degradations(default_kernels(scale), args.noise)
    with torch.no_grad():
        result = analyse(model.embed, images, degradations, convention=convention, scale=scale,
                         seed=args.seed, n_folds=args.folds, attention=codebook_attention(model))
    weights = "untrained (fresh weights)" if args.untrained else f"{fmt} checkpoint"
    result.summary = {"checkpoint": str(args.checkpoint), "model": model.name,
                      "weights": weights, **result.summary}
    title = f"{model.name.upper()} ({'untrained' if args.untrained else args.checkpoint.name})"
    written = write_outputs(result, args.out, title)
    print(f"{title}: {len(images)} images x {len(degradations)} degradations "
          f"({convention} convention, x{scale}, LR {args.lr_size}x{args.lr_size})")
    print(table(result.summary))
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    sys.exit(utility.run_cli(main))
