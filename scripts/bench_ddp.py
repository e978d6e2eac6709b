"""Training speed of one process against N torchrun processes on the same global batch.

    python scripts/bench_ddp.py [--processes 2] [--rounds 2] [--cpu] [-- extra main.py flags]

Runs ``main.py`` (one process) and ``torchrun --standalone --nproc_per_node N main.py`` with the
same options, alternating (1, N, 1, N, ...) so a busy machine affects both alike, reads each
epoch's seconds per iteration from the run's log (the training loop's own timing: validation
and start-up excluded) and prints the medians per phase and the speed-up. The default options
are the tiny CDSR configuration of the multi-GPU acceptance run (x2, LR patch 24, global batch
4, 1 + 2 epochs of 12 iterations).
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "CDSR", "--scale", "2", "--patch_size", "24", "--batch_size", "4",
        "--epochs_encoder", "1", "--epochs_sr", "2", "--freeze_epoch", "3", "--test_every", "12",
        "--print_every", "12"]
EPOCH_LINE = re.compile(r"epoch (\d+) \[(\d+)/\2\] (\w+):.* \| ([0-9.]+) s/it")


def seconds_per_iteration(log: Path) -> dict:
    """{phase: [s/it of each epoch]} from a run's log.txt."""
    found: dict = {}
    for match in EPOCH_LINE.finditer(log.read_text()):
        found.setdefault(match[3], []).append(float(match[4]))
    return found


def run(processes: int, options: list, work: Path, name: str) -> dict:
    command = [sys.executable, str(ROOT / "main.py"), *options, "--save", name]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), *command[1:]]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds_per_iteration(work / "experiment" / name / "log.txt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes to compare")
    parser.add_argument("--rounds", type=int, default=2, help="alternating repetitions of both")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo) even with CUDA")
    parser.add_argument("extra", nargs="*", help="main.py options replacing the tiny defaults")
    args = parser.parse_args()
    options = (args.extra or TINY) + (["--cpu"] if args.cpu else [])
    timings = {1: {}, args.processes: {}}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            for processes in timings:
                for phase, values in run(processes, options, Path(work), f"p{processes}_{round_}").items():
                    timings[processes].setdefault(phase, []).extend(values)
    print(f"{'phase':8} {'1 process s/it':>15} {f'{args.processes} processes s/it':>18} {'speed-up':>9}")
    for phase, values in timings[1].items():
        one, many = statistics.median(values), statistics.median(timings[args.processes][phase])
        print(f"{phase:8} {one:15.3f} {many:18.3f} {one / many:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
