"""Convert a checkpoint between the authors' raw state dicts and our format.

    python scripts/convert_checkpoint.py IN OUT --to ours     [--model cdsr|dasr] [--scale S]
    python scripts/convert_checkpoint.py IN OUT --to authors  [--model cdsr|dasr] [--scale S] [--weights ema|raw]

The model and scale are read from IN (our fields, or the authors' key names and upsampler
shapes); --model/--scale only assert them. The model is rebuilt and loaded strictly either way
(``model.checkpoint.load_model``). An authors' file lacks MoCo's key encoder and queue:
``--to ours`` fills the key encoder from the query encoder and starts a fresh queue (seed
``--seed``), as loading the file into a model does. ``--to authors`` writes what the authors'
trainer saves (no key encoder, no queue; DASR's MeanShift constants included). A checkpoint of
ours from a run with --ema_decay holds two sets of weights: ``--weights ema`` (the default for
such a file) writes the moving average, ``--weights raw`` the trained weights. Bad input gives
one error line and exit code 2.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utility  # noqa: E402
from model import model_names  # noqa: E402
from model.authors_format import authors_model_names, ours_to_authors  # noqa: E402
from model.checkpoint import (CheckpointError, atomic_torch_save, describe, detect_format,  # noqa: E402
                              has_ema, load_model, read_checkpoint, save_checkpoint)
from option import ArgumentParser  # noqa: E402

def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="convert_checkpoint.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, metavar="IN", help="checkpoint to convert")
    parser.add_argument("target", type=Path, metavar="OUT", help="where to write the result")
    parser.add_argument("--to", required=True, choices=("ours", "authors"), help="output format")
    parser.add_argument("--model", choices=model_names(), help="expected model (checked)")
    parser.add_argument("--scale", type=int, help="expected scale (checked)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the fresh MoCo queue (--to ours)")
    parser.add_argument("--weights", choices=("ema", "raw"), default=None,
                        help="--to authors from a checkpoint of a run with --ema_decay: its moving "
                             "average of the weights (ema) or the trained weights (raw); default: "
                             "ema when the file holds one, else raw")
    return parser


def convert(args: argparse.Namespace) -> str:
    checkpoint = read_checkpoint(args.source)
    fmt = detect_format(checkpoint)
    if fmt == args.to:
        owner = "our" if fmt == "ours" else "the authors'"
        raise CheckpointError(f"{args.source} is already in {owner} format")
    if args.weights == "ema" and not has_ema(checkpoint):
        raise CheckpointError(f"--weights ema: {args.source} holds no moving average of the weights "
                              "(a run without --ema_decay, or an authors' file); use --weights raw")
    torch.manual_seed(args.seed)
    net = load_model(checkpoint, model_name=args.model, scale=args.scale, ema=args.weights != "raw")
    if args.to == "ours":
        save_checkpoint(args.target, model_name=net.name, scale=net.scale, model=net.state_dict(),
                        config={"converted_from": str(args.source)})
    else:
        if net.name not in authors_model_names():
            raise CheckpointError(f"{describe(net.name, net.scale)} has no authors' format: their "
                                  "code has CDSR, DASR and KDSR only (a CDSR ablation exists only "
                                  "here)")
        atomic_torch_save(ours_to_authors(net.state_dict(), net.name), args.target)
    weights = (" ema" if args.weights != "raw" else " raw") if has_ema(checkpoint) else ""
    return (f"{args.source} ({fmt}{weights}, {describe(net.name, net.scale)}) -> {args.target} "
            f"({args.to})")


def main(argv: Optional[Sequence[str]] = None) -> None:
    print(convert(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(utility.run_cli(main))
