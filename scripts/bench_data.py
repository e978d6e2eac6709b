"""Training items per second at DF2K image size: decoding the PNG files vs reading the decoded store.

    python scripts/bench_data.py [--hr_dir DIR] [--images 8] [--workers N] [--seconds 6] [--work DIR]

Without --hr_dir it first writes a DF2K-sized folder: --images photos bundled with scikit-image
and matplotlib, upscaled to 2040x1356 PNGs. With --hr_dir it uses (links) the first --images files
of that folder. Both go under --work (default: a temporary folder, removed at the end; a kept
--work is reused by the next run). It builds the decoded store of that folder (printing the build
time and the disk cost), then measures the training loader itself (data.build_train_set and
build_train_loader with the 'cdsr' recipe: 192x192 HR patches, batches of --batch_size) reading
the PNG files and reading the store: in-process (--n_threads 0, with one torch thread as in a
loader worker), with 1 worker and with --workers workers, each for about --seconds after its
first batch. It prints one table; the
ratios compare modes measured side by side in this run, so they hold on a busy machine where the
absolute numbers do not. "Per worker" is the 1-worker row: what one loader process delivers.
The last line reads ``store/png items/s per worker: <ratio>x``.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import option  # noqa: E402
import utility  # noqa: E402
from data import build_train_loader, build_train_set  # noqa: E402
from data.patch_pairs import PatchPairs  # noqa: E402
from data.images import list_images, write_png  # noqa: E402
from data.sample_photos import training_photos  # noqa: E402

DF2K_SIZE = (1356, 2040)  # (H, W) of a typical DF2K image


def build_parser() -> argparse.ArgumentParser:
    parser = option.ArgumentParser(prog="bench_data.py", description=__doc__.split("\n")[0])
    parser.add_argument("--hr_dir", type=Path, default=None,
                        help="your own HR folder (default: upscaled bundled photos)")
    parser.add_argument("--images", type=int, default=8, help="images in the benchmark folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="loader workers of the last row (default: one per CPU core)")
    parser.add_argument("--batch_size", type=int, default=32, help="items per batch")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="timed seconds per mode (at least 3 batches)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the images and the store (kept; default: temporary)")
    return parser


def write_df2k_like(folder: Path, count: int) -> None:
    """``count`` PNGs of DF2K size: the bundled photos, upscaled (bicubic), mirrored on reuse."""
    photos = list(training_photos().items())
    for i in range(count):
        name, image = photos[i % len(photos)]
        if (i // len(photos)) % 2:
            image = np.ascontiguousarray(image[:, ::-1])
        path = folder / f"{i:04d}_{name}.png"
        if not path.exists():
            write_png(path, cv2.resize(image, DF2K_SIZE[::-1], interpolation=cv2.INTER_CUBIC))


def link_first_images(source: Path, folder: Path, count: int) -> None:
    for path in list_images(source)[:count]:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())


def training_args(work: Path, workers: int, batch_size: int, cache: Optional[Path]):
    argv = ["--dir_data", str(work), "--data_train", "HR", "--preset", "cdsr", "--cpu",
            "--n_threads", str(workers), "--batch_size", str(batch_size),
            "--queue_size", str(batch_size), "--test_every", "2000"]
    return option.parse_args(argv + (["--data_cache", str(cache)] if cache else []))


def items_per_second(args: argparse.Namespace, dataset: PatchPairs, seconds: float) -> float:
    """Items/s of one epoch's loader, timed from its first batch (workers started) on."""
    batches = iter(build_train_loader(args, dataset, seed=1))
    next(batches)
    count, started = 0, time.perf_counter()
    for batch in batches:
        count += batch["hr"].shape[0]
        if time.perf_counter() - started >= seconds and count >= 3 * args.batch_size:
            break
    return count / (time.perf_counter() - started)


def timed(build):
    started = time.perf_counter()
    result = build()
    return result, time.perf_counter() - started


def bench(options: argparse.Namespace, work: Path) -> None:
    hr = work / "HR"
    hr.mkdir(parents=True, exist_ok=True)
    if options.hr_dir is None:
        print(f"writing {options.images} PNGs of {DF2K_SIZE[1]}x{DF2K_SIZE[0]} into {hr} ...", flush=True)
        write_df2k_like(hr, options.images)
    else:
        link_first_images(options.hr_dir, hr, options.images)
    cache = work / "store"
    reused = cache.exists()
    png_set, png_check = timed(lambda: build_train_set(training_args(work, options.workers, 32, None)))
    store_set, store_build = timed(lambda: build_train_set(training_args(work, options.workers, 32, cache)))
    _, store_check = timed(lambda: build_train_set(training_args(work, options.workers, 32, cache)))

    modes: List[Tuple[str, int]] = [("in-process", 0), ("1 worker", 1)]
    if options.workers > 1:
        modes.append((f"{options.workers} workers", options.workers))
    rates: Dict[str, Tuple[float, float]] = {}
    for label, workers in modes:
        print(f"timing {label} ...", flush=True)
        rates[label] = tuple(items_per_second(training_args(work, workers, options.batch_size, c), d,
                                              options.seconds)
                             for c, d in ((None, png_set), (cache, store_set)))
    build = f"{'update of the kept store' if reused else 'first build'} {store_build:.1f} s"
    report(options, png_set, store_set, rates, modes, png_check, build, store_check)


def report(options, png_set, store_set, rates, modes, png_check, build, store_check) -> None:
    images = len(png_set.sources)
    png_bytes = sum(Path(s.name).stat().st_size for s in png_set.sources)
    store_bytes = sum(s.entry.stat().st_size for s in store_set.sources)
    shapes = {s.shape for s in png_set.sources}
    print(f"\n{images} images, {', '.join(f'{w}x{h}' for h, w in sorted(shapes))}; "
          f"HR patch {png_set.patch}, batch {options.batch_size}; {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end (others' work counts too)")
    print(f"start-up: PNG folder check (every image decoded) {png_check:.1f} s; store {build}; "
          f"store check when up to date {store_check:.2f} s")
    print(f"disk: PNG {png_bytes / 1e6:.0f} MB, store {store_bytes / 1e6:.0f} MB "
          f"({store_bytes / png_bytes:.1f}x; {store_bytes / images / 1e6:.1f} MB per image)\n")
    print(f"{'mode':<12} {'png items/s':>12} {'store items/s':>14} {'store/png':>10} "
          f"{'png/worker':>11} {'store/worker':>13}")
    for label, workers in modes:
        png, store = rates[label]
        print(f"{label:<12} {png:>12.1f} {store:>14.1f} {store / png:>9.0f}x "
              f"{png / max(workers, 1):>11.1f} {store / max(workers, 1):>13.1f}")
    png, store = rates["1 worker"]
    print(f"store/png items/s per worker: {store / png:.0f}x")


def main(argv: Optional[Sequence[str]] = None) -> int:
    def run():
        options = build_parser().parse_args(argv)
        if options.images < 1 or options.workers < 1 or options.batch_size < 1:
            raise ValueError("--images, --workers and --batch_size must be positive")
        utility.setup_logging()
        torch.set_num_threads(1)  # as in loader workers; tiny ops on a busy machine crawl otherwise
        if options.work is not None:
            return bench(options, options.work)
        with tempfile.TemporaryDirectory(prefix="bench_data_") as work:
            bench(options, Path(work))
    return utility.run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
