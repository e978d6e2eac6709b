"""Check this project against every golden vector found in folders laid out like ../shared/golden.

    python scripts/verify_golden.py [GOLDEN_DIR ...] [--hr_root DIR] [--threads N]

Without GOLDEN_DIR it checks the project's own tests/golden_kdsr (KDSR) and ../shared/golden
(CDSR, DASR), the latter where it exists. Prints one line per case (group, name, max error
with its unit, tolerance, pass/FAIL), the largest error of each group (relative to its
tolerance), then ``N passed, M failed``. Exit code 0 when everything passes, 1 when anything
fails or nothing was found, 2 for bad arguments. ``--hr_root`` holds ``<Set>/x<s>/`` HR images
for the ``manet_protocol`` cases.
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
os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the report

import option  # noqa: E402  (light: imports nothing heavy)


def build_parser() -> argparse.ArgumentParser:
    parser = option.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("golden_dirs", type=Path, nargs="*", metavar="GOLDEN_DIR",
                        help="folders of golden vectors (default: tests/golden_kdsr and, where "
                             "it exists, ../shared/golden)")
    parser.add_argument("--hr_root", type=Path, default=None,
                        help="HR images as <Set>/x<s>/*.png, for manet_protocol/")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the cases are tiny, and OpenMP "
                             "spin-waiting slows them down on a busy machine)")
    return parser


def default_golden_dirs() -> list[Path]:
    """The project's KDSR goldens and, beside the checkout, the shared CDSR/DASR ones."""
    shared = ROOT.parent / "shared" / "golden"
    return [ROOT / "tests" / "golden_kdsr"] + ([shared] if shared.is_dir() else [])


def format_result(group: str, result) -> str:
    """One report line for a ``GoldenResult`` of ``group``."""
    verdict = "pass" if result.passed else "FAIL"
    return (f"{verdict}  {group}/{result.name}  max error {result.max_error:.3g} {result.unit}"
            f"  (tolerance {result.tolerance:.3g})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    golden_dirs = args.golden_dirs or default_golden_dirs()
    for folder in golden_dirs:
        if not folder.is_dir():
            print(f"verify_golden: error: {folder} is not a folder", file=sys.stderr)
            return 2
    if args.hr_root is not None and not args.hr_root.is_dir():
        print(f"verify_golden: error: --hr_root {args.hr_root} is not a folder", file=sys.stderr)
        return 2
    import torch  # heavy imports only once the arguments are valid
    from scripts.golden import GoldenResult, discover

    torch.set_num_threads(max(args.threads, 1))
    checks, notes = {}, []
    for folder in golden_dirs:
        found, found_notes = discover(folder, args.hr_root)
        for group, check in found.items():
            checks[group if group not in checks else f"{group}[{folder}]"] = check
        notes += found_notes
    print(f"golden folders: {', '.join(map(str, golden_dirs))}; {torch.get_num_threads()} "
          "thread(s)")
    for note in notes:
        print(f"note: {note}")
    worst, passed, failed = {}, 0, 0
    for group, check in checks.items():
        start = time.perf_counter()
        try:
            results = check()
        except Exception as error:  # a group that cannot run at all is one failure, not a crash
            results = [GoldenResult(f"(could not run: {type(error).__name__}: {error})",
                                    float("inf"), 0.0, False)]
        for result in results:
            print(format_result(group, result))
            passed, failed = passed + result.passed, failed + (not result.passed)
        if results:
            worst[group] = (max(results, key=lambda r: r.ratio), len(results), time.perf_counter() - start)
    print()
    for group, (result, count, seconds) in worst.items():
        print(f"largest error in {group} ({count} cases, {seconds:.1f} s): {result.name}: "
              f"{result.max_error:.3g} {result.unit} = {result.ratio:.3g} x tolerance {result.tolerance:.3g}")
    print(f"{passed} passed, {failed} failed")
    if passed + failed == 0:
        print(f"verify_golden: no golden cases found in {', '.join(map(str, golden_dirs))}",
              file=sys.stderr)
        return 1
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
