"""Gather test.py results into one table: rows = models, columns = test sets.

    python scripts/ablation_table.py experiment/A_test experiment/B_test ... --out experiment/ablation
    python scripts/ablation_table.py DASR=experiment/d KDSR-S-M=experiment/k --out DIR --name methods

Each argument is a test.py run folder (its ``results.json``), optionally ``LABEL=FOLDER`` to
name its row (default: the model's name); several folders of one row (e.g. the held-out photos
and the benchmark sets) fill different columns of it. A cell is PSNR / SSIM, averaged over the
run's degradation settings when it scored several (--protocol). A last row gives bicubic
upscaling of the same LR images. Writes OUT/NAME.md, .csv, .json (NAME default ablation) and
prints the markdown.
"""
import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utility  # noqa: E402

Cells = Dict[str, Dict[str, Dict[str, float]]]   # row -> dataset -> {"psnr", "ssim"}
BICUBIC = "Bicubic (MATLAB)"


def labelled(argument: str) -> Tuple[Optional[str], Path]:
    """'LABEL=FOLDER' -> (LABEL, FOLDER); 'FOLDER' -> (None, FOLDER)."""
    label, sep, folder = argument.partition("=")
    return (label, Path(folder)) if sep and label else (None, Path(argument))


def gather(run_dirs: List[Union[Path, Tuple[Optional[str], Path]]]) -> tuple[Cells, Dict[str, str]]:
    """(cells, {row: checkpoint}) from the runs' results.json (each a folder, or a (row label
    or None, folder) pair); the bicubic row from the first run that scored each dataset."""
    cells: Cells = {}
    checkpoints: Dict[str, str] = {}
    for entry in run_dirs:
        label, run_dir = entry if isinstance(entry, tuple) else (None, entry)
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass test.py run folders")
        report = json.loads(path.read_text())
        row = label or report["model"]
        checkpoints.setdefault(row, report["checkpoint"])
        settings = list(report["results"].values())                     # [{dataset: metrics}]
        for dataset in _in_command_order(settings[0], report.get("options") or {}):
            for prefix, target in (("", row), ("bicubic_", BICUBIC)):
                if target == BICUBIC and dataset in cells.get(BICUBIC, {}):
                    continue
                cells.setdefault(target, {})[dataset] = {
                    metric: sum(s[dataset][prefix + metric] for s in settings) / len(settings)
                    for metric in ("psnr", "ssim")}
    if BICUBIC in cells:                                               # last row
        cells[BICUBIC] = cells.pop(BICUBIC)
    return cells, checkpoints


def _in_command_order(datasets: Dict[str, object], options: Dict[str, object]) -> List[str]:
    """The datasets in --data_test order (results.json stores its keys sorted), others after."""
    wanted = str(options.get("data_test") or "").split("+")
    return [d for d in wanted if d in datasets] + [d for d in datasets if d not in wanted]


def datasets_of(cells: Cells) -> List[str]:
    return list(dict.fromkeys(d for row in cells.values() for d in row))


def markdown(cells: Cells) -> str:
    columns = datasets_of(cells)
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, values in cells.items():
        lines.append(f"| {row} | " + " | ".join(
            f"{values[d]['psnr']:.2f} / {values[d]['ssim']:.4f}" if d in values else "-"
            for d in columns) + " |")
    return "\n".join(lines)


def write_table(cells: Cells, checkpoints: Dict[str, str], out: Path, name: str = "ablation") -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(cells)
    (out / f"{name}.md").write_text("PSNR (dB) / SSIM, Y channel, scale pixels shaved.\n\n"
                                    + text + "\n")
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "dataset", "psnr", "ssim"])
        for row, values in cells.items():
            for dataset, m in values.items():
                writer.writerow([row, dataset, f"{m['psnr']:.4f}", f"{m['ssim']:.4f}"])
    utility.write_json(out / f"{name}.json", {"results": cells, "checkpoints": checkpoints})
    return text


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=labelled, nargs="+", metavar="[LABEL=]RUN",
                        help="test.py run folders, each optionally named LABEL=FOLDER")
    parser.add_argument("--out", type=Path, required=True, help="folder for NAME.{md,csv,json}")
    parser.add_argument("--name", default="ablation", help="file name of the tables")
    args = parser.parse_args(argv)
    cells, checkpoints = gather(args.runs)
    print(write_table(cells, checkpoints, args.out, args.name))
    print(f"table: {args.out / (args.name + '.md')}")


if __name__ == "__main__":
    sys.exit(utility.run_cli(main))
