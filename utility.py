"""Run folders and their lock, logging, JSON records, the device choice, stop signals, one-line
CLI errors and timing."""
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Union

import torch
from torch.distributed import DistError

LOGGER_NAME = "cdsr"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(log_file: Union[str, Path, None] = None, *, quiet: bool = False) -> logging.Logger:
    """Log INFO to stderr and, when given, append to ``log_file``; ``quiet`` (a process other
    than rank 0) logs errors only."""
    logger = get_logger()
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:                 # a log that could not be written (already reported)
            pass
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_LogFile(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


class _LogFile(logging.FileHandler):
    """A log file whose write errors stop the run (``logging`` would print them and go on)."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        raise OSError(f"cannot write the log {self.baseFilename} "
                      f"({getattr(error, 'strerror', None) or error})") from error


class Timer:
    """Wall-clock stopwatch: ``elapsed()`` seconds since construction or the last ``reset()``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def write_json(path: Union[str, Path], data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def append_json_line(path: Union[str, Path], record: dict) -> None:
    """Append ``record`` as one JSON line (a log of events, e.g. a run's resumes)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def select_device(cpu: bool, cuda_index: Optional[int] = None) -> torch.device:
    """CUDA when available and not ``cpu`` (device ``cuda_index``, e.g. torchrun's local rank,
    when given); chosen once per run."""
    if not torch.cuda.is_available() or cpu:
        return torch.device("cpu")
    return torch.device("cuda", cuda_index) if cuda_index is not None else torch.device("cuda")


def prepare_run_dir(root: Union[str, Path], name: str, resume: bool) -> Path:
    """``root/name``, created. Starting afresh where a run already exists moves the old folder
    aside to ``name.<timestamp>`` (announced on stderr) instead of overwriting anything."""
    run_dir = Path(root) / name
    if run_dir.exists() and not resume and any(run_dir.iterdir()):
        archived = run_dir.with_name(f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(archived)
        get_logger().info(f"moved the earlier run {run_dir} to {archived}")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("checkpoint/.*.tmp"):     # left by a save that was killed
        stale.unlink()
    return run_dir


def job_incarnation() -> Optional[List]:
    """[job id, restart count] of a job that a scheduler reruns with the same command: a
    SLURM requeue (SLURM_JOB_ID, SLURM_RESTART_COUNT) or torchrun's restarts
    (TORCHELASTIC_RUN_ID, TORCHELASTIC_RESTART_COUNT); None outside both. A later
    incarnation of a job only starts once the earlier one has ended."""
    for job, restart in (("SLURM_JOB_ID", "SLURM_RESTART_COUNT"),
                         ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")):
        if os.environ.get(job):
            return [f"{job}={os.environ[job]}", int(os.environ.get(restart, "0") or 0)]
    return None


def _owner_gone(owner: dict, me: dict) -> bool:
    """Whether the process that wrote the lock record ``owner`` has ended: a dead pid on this
    host, or an earlier incarnation of this very job (on any host)."""
    if owner.get("host") == me["host"] and not pid_alive(owner.get("pid")):
        return True
    theirs, mine = owner.get("job"), me["job"]
    return bool(theirs and mine and theirs[0] == mine[0] and theirs[1] < mine[1])


class RunLock:
    """A run folder belongs to one live run: ``<run>.lock`` beside it holds the owner's pid,
    host, start time and scheduler job (``job_incarnation``). ``acquire`` refuses
    (ValueError) while a live process on this host (or any process on another host) owns
    it, and takes over with a warning the lock of a dead process or of an earlier
    incarnation of the same requeued or restarted job; ``release`` removes the lock if it is
    ours."""

    def __init__(self, run_dir: Union[str, Path]) -> None:
        run_dir = Path(run_dir)
        self.path = run_dir.with_name(run_dir.name + ".lock")
        self.owned = False

    def _owner(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": now(),
                  "job": job_incarnation()}
        for _ in range(2):
            try:
                with open(self.path, "x") as f:              # atomic: fails if it exists
                    json.dump(record, f)
                self.owned = True
                return
            except FileExistsError:
                owner = self._owner() or {}
                if not _owner_gone(owner, record):
                    raise ValueError(
                        f"run folder {self.path.with_suffix('')} is in use by pid {owner.get('pid')} on "
                        f"{owner.get('host')} since {owner.get('started')} ({self.path}); choose "
                        "another --save, or delete the lock file if that run is gone") from None
                get_logger().warning(f"taking over the lock of a dead run (pid {owner.get('pid')}, "
                                     f"started {owner.get('started')}): {self.path}")
                self.path.unlink(missing_ok=True)
        raise ValueError(f"cannot lock {self.path}: another run took it just now")

    def release(self) -> None:
        if self.owned and (self._owner() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.owned = False


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid runs on this host (False for anything but a pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FailedOnRankZero(Exception):
    """This process stops because rank 0 failed at a step the processes do together (e.g.
    reading the checkpoint to resume); rank 0 printed the error line, this one ends quietly
    with status 2."""


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; the message says how to go on."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class StopSignals:
    """While active (a context manager), SIGTERM and SIGUSR1, which cluster schedulers send
    before killing a job, do not kill the process: they set ``requested`` to the signal number,
    and the training loop stops cleanly at the end of its current iteration."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = 0
        self._previous: Dict[int, object] = {}

    def _handle(self, number: int, frame) -> None:
        self.requested = number

    def __enter__(self) -> "StopSignals":
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def run_cli(main: Callable[[], None], on_interrupt: str = "interrupted",
            reports_errors: Callable[[], bool] = lambda: True) -> int:
    """Run an entry point; bad input ends with one ``error: ...`` line and exit status 2,
    Ctrl-C with the line ``on_interrupt`` and status 130. ``reports_errors``: whether this
    process prints its error line (a multi-process job decides: ``model.parallel.reports_errors``).

    ``CDSR_DEBUG=1`` shows the full traceback instead.
    """
    try:
        main()
    except SystemExit as exit_request:  # argparse has already printed its one line
        return exit_request.code
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        return 130
    except FailedOnRankZero:
        return 2
    except DistError as error:  # another process of the job failed or vanished
        if os.environ.get("CDSR_DEBUG"):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: (rank {os.environ.get('RANK', '0')}) lost contact with the other "
              f"processes: {first}", file=sys.stderr)
        return 2
    except Preempted as stop:
        if os.environ.get("RANK", "0") == "0":
            print(stop, file=sys.stderr)
        return 128 + stop.signal_number
    except (ValueError, OSError, FloatingPointError) as error:  # OSError names its file
        if os.environ.get("CDSR_DEBUG"):
            raise
        if reports_errors():
            rank = os.environ.get("RANK", "0")
            print(f"error: {'' if rank == '0' else f'(rank {rank}) '}{error}", file=sys.stderr)
        # The frames hold the data loader (its workers) alive until exit; free them now.
        traceback.clear_frames(error.__traceback__)
        return 2
    return 0


class StepMeter:
    """Per-iteration timing of a training loop: how much of each iteration was spent waiting
    for the data loader. Wrap the loader with ``timed``; the time between two batches minus
    the wait is the step."""

    def __init__(self) -> None:
        self.waiting = 0.0
        self.total = 0.0
        self.steps = 0

    def timed(self, batches: Iterable) -> Iterator:
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waiting += time.perf_counter() - start
            yield batch
            self.total += time.perf_counter() - start
            self.steps += 1

    def seconds_per_step(self) -> float:
        return self.total / max(self.steps, 1)

    def wait_share(self) -> float:
        """Fraction of the iterations' time spent waiting for data (0 before any step)."""
        return self.waiting / self.total if self.total > 0 else 0.0
