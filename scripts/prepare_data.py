"""Build, or bring up to date, the decoded store of the training images before training.

    python scripts/prepare_data.py --dir_data ROOT [--data_train DF2K] --data_cache DIR [--n_threads N]

decodes every image of --data_train (found as main.py finds it: ROOT/NAME/HR, ROOT/NAME or ROOT)
once into DIR (layout in data/store.py), with a progress bar, and prints the store's size on disk.
``main.py --dir_data ROOT --data_cache DIR ...`` then trains from it without decoding; main.py
would also build it on first use, this only does it ahead (e.g. on a data node). Running it
again decodes only new or changed images. Bad input gives one error line and exit code 2.
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import option  # noqa: E402
import utility  # noqa: E402
from data import training_folders  # noqa: E402
from data.store import store_sources  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = option.ArgumentParser(prog="prepare_data.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dir_data", required=True, help="root of the training folders, as for main.py")
    parser.add_argument("--data_train", default="DF2K",
                        help="training set(s) under --dir_data, '+'-separated, as for main.py")
    parser.add_argument("--data_cache", required=True, type=Path,
                        help="folder of the decoded store (pass the same to main.py)")
    parser.add_argument("--n_threads", type=int, default=os.cpu_count() or 1,
                        help="processes that decode images (default: one per CPU core)")
    return parser


def prepare(args: argparse.Namespace) -> None:
    if args.n_threads < 0:
        raise ValueError(f"--n_threads must be >= 0, got {args.n_threads}")
    folders = training_folders(args)
    utility.setup_logging()
    started = time.perf_counter()
    images = store_sources(folders, args.data_cache, workers=args.n_threads)
    on_disk = sum(image.offset + image.shape[0] * image.shape[1] * 3 for image in images)
    sources = sum(Path(image.name).stat().st_size for image in images)
    print(f"decoded store under {args.data_cache}: {len(images)} images, {on_disk / 1e9:.2f} GB "
          f"on disk ({sources / 1e9:.2f} GB as image files), ready in "
          f"{time.perf_counter() - started:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return utility.run_cli(lambda: prepare(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
