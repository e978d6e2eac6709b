"""Convert a checkpoint between the authors' raw state dicts and our format.

    python scripts/convert_checkpoint.py IN OUT --to ours     [--model cdsr|dasr] [--scale S]
    python scripts/convert_checkpoint.py IN OUT --to authors  [--model cdsr|dasr] [--scale S]

The model and scale are read from IN (our fields, or the authors' key names and upsampler
shapes); --model/--scale only assert them. An authors' file lacks MoCo's key encoder and queue:
``--to ours`` fills the key encoder from the query encoder and starts a fresh queue (seed
``--seed``), as loading the file into a model would. ``--to authors`` writes what the authors'
trainer saves (no key encoder, no queue; DASR's MeanShift constants included).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import build_model, model_names  # noqa: E402
from model.checkpoint import (CheckpointError, atomic_torch_save, describe,  # noqa: E402
                              detect_format, infer_authors_model, load_weights, ours_to_authors,
                              read_checkpoint, save_checkpoint)

AUTHORS_MODELS = ("cdsr", "dasr")  # the models the authors' code (and so their format) has


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, metavar="IN", help="checkpoint to convert")
    parser.add_argument("target", type=Path, metavar="OUT", help="where to write the result")
    parser.add_argument("--to", required=True, choices=("ours", "authors"), help="output format")
    parser.add_argument("--model", choices=model_names(), help="expected model (checked)")
    parser.add_argument("--scale", type=int, help="expected scale (checked)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the fresh MoCo queue (--to ours)")
    return parser


def _check_expected(name: str, scale: int, args: argparse.Namespace) -> None:
    wanted_name = args.model or name
    wanted_scale = args.scale if args.scale is not None else scale
    if (wanted_name, wanted_scale) != (name, scale):
        raise CheckpointError(f"{args.source} is {describe(name, scale)}, "
                              f"not {describe(wanted_name, wanted_scale)} as requested")


def convert(args: argparse.Namespace) -> str:
    checkpoint = read_checkpoint(args.source)
    fmt = detect_format(checkpoint)
    if fmt == args.to:
        owner = "our" if fmt == "ours" else "the authors'"
        raise CheckpointError(f"{args.source} is already in {owner} format")
    if fmt == "authors":
        name, scale = infer_authors_model(checkpoint)
        _check_expected(name, scale, args)
        torch.manual_seed(args.seed)
        net = build_model(name, scale=scale)
        load_weights(net, checkpoint)
        save_checkpoint(args.target, model_name=name, scale=scale, model=net.state_dict(),
                        config={"converted_from": str(args.source)})
    else:
        absent = [f for f in ("model_name", "scale", "model") if f not in checkpoint]
        if absent:
            raise CheckpointError(f"{args.source} lacks field(s) {', '.join(absent)}")
        name, scale = str(checkpoint["model_name"]), int(checkpoint["scale"])
        _check_expected(name, scale, args)
        if name.lower() not in AUTHORS_MODELS:
            raise CheckpointError(f"{describe(name, scale)} has no authors' format: their code "
                                  "has CDSR and DASR only (a CDSR ablation exists only here)")
        atomic_torch_save(ours_to_authors(checkpoint["model"], name), args.target)
    return f"{args.source} ({fmt}, {describe(name, scale)}) -> {args.target} ({args.to})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(convert(args))
    except (CheckpointError, OSError) as error:
        print(f"convert_checkpoint: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
