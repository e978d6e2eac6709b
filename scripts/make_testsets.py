"""Write the LR test images of a published blind-SR protocol (logic in data/protocols.py).

    python scripts/make_testsets.py --protocol cdsr --hr_dir ../benchmark/Set5/x4 --name Set5 \\
        --scale 4 --out testsets [--noise 15] [--seed 0] [--sv_modes 1,2,3,4,5]

writes OUT/<name>_x<scale>/ for cdsr (the layout of MANet's prepare_testset.py and the CDSR
README's SRTestset) and OUT/<protocol>/<name>_x<scale>/ for the others (HR_si/,
LR_mode0_noise<n>/, manifest.json), and prints that folder. Bad input gives one error line and
exit code 2.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utility  # noqa: E402
from data.eval_set import EVAL_SEED  # noqa: E402
from data.protocols import PROTOCOLS  # noqa: E402
from data.testsets import write_testset  # noqa: E402
from option import ArgumentParser  # noqa: E402


def _sv_modes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, got '{text}'")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="make_testsets.py", description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", required=True, help=f"one of: {', '.join(PROTOCOLS)}")
    parser.add_argument("--hr_dir", required=True, type=Path, help="folder of HR images")
    parser.add_argument("--name", required=True, help="set name, e.g. Set5 (B100 gets cdsr's SV modes)")
    parser.add_argument("--scale", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="output root")
    parser.add_argument("--noise", type=float, default=None,
                        help="noise level in 0..255 units (default: every level the paper reports)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED,
                        help="seed of the noise and of random SV kernels (test.py generates with "
                             f"{EVAL_SEED})")
    parser.add_argument("--sv_modes", type=_sv_modes, default=None,
                        help="cdsr spatially variant modes, e.g. 1,2,3,4,5 (default: 1-5 for B100 only)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(write_testset(args.protocol, args.hr_dir, args.name, args.scale, args.out,
                        noise=args.noise, seed=args.seed, sv_modes=args.sv_modes))


if __name__ == "__main__":
    sys.exit(utility.run_cli(main))
