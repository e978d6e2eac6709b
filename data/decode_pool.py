"""Decode every training image once, in a few processes, with a progress bar.

Start-up checks (``folder_sources``) and the decoded store's build (``data.store``) both run one
task per image file here. A file that cannot be used (an ``ImageError``: corrupt, truncated,
unsupported) does not stop the others; after the last task one ``ImageError`` names it (and how
many more there are), so the user fixes the folder in one pass. Any other error (a full disk, a
bug) stops everything at once.
"""
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from tqdm import tqdm

from data.images import ImageError

Result = TypeVar("Result")
MAX_NAMED = 5  # unusable files named in the error line; the rest are counted


def each_decoded(task: Callable[[Path], Result], paths: Sequence[Path], workers: int,
                 desc: str) -> Iterator[Tuple[int, Result]]:
    """Yield ``(i, task(paths[i]))`` for every path, in the order the tasks finish.

    ``task`` must be a picklable (module-level) function when ``workers > 1``: that many
    processes run it; otherwise this process does. Raises ``ImageError`` after the last result
    when some task raised one, naming the failed files in ``paths`` order.
    """
    failures: Dict[int, ImageError] = {}
    run = _in_processes if workers > 1 and len(paths) > 1 else _in_this_process
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=None) as bar:
        for i, result, error in run(task, paths, min(workers, len(paths))):
            bar.update()
            if error is None:
                yield i, result
            else:
                failures[i] = error
    if failures:
        order = sorted(failures)
        raise _summary([failures[i] for i in order], [paths[i] for i in order])


Outcome = Tuple[int, object, Optional[ImageError]]


def _in_this_process(task, paths, workers) -> Iterator[Outcome]:
    for i, path in enumerate(paths):
        try:
            yield i, task(path), None
        except ImageError as error:
            yield i, None, error


def _in_processes(task, paths, workers) -> Iterator[Outcome]:
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pending: Dict[Future, int] = {pool.submit(task, path): i for i, path in enumerate(paths)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    yield i, future.result(), None
                except ImageError as error:
                    yield i, None, error
    finally:  # on any other error or an interrupt, drop the queued tasks instead of waiting
        pool.shutdown(wait=True, cancel_futures=True)


def _summary(errors: List[ImageError], paths: List[Path]) -> ImageError:
    """One line: the first failure's own message, then the other failed files."""
    if len(errors) == 1:
        return errors[0]
    others = [p.name for p in paths[1:MAX_NAMED + 1]]
    more = len(paths) - 1 - len(others)
    listed = ", ".join(others) + (f" and {more} more" if more else "")
    return ImageError(f"{errors[0]} (also unusable: {listed})")
