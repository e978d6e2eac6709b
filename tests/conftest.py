"""Shared pytest fixtures.

The golden vectors and benchmark images live in ``../shared`` next to the checkout. A user's own
clone may not have it: tests that need it skip with the reason. In CI (``CI=1``) a missing
``../shared`` is an error, so golden tests can never silently stop running there.
"""
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


# Tests use tiny tensors: one intra-op thread avoids OpenMP's spin-waiting, which made small ops
# up to 10x slower on a busy 2-core machine (results agree to ~1e-6 either way).
torch.set_num_threads(1)


def _shared_folder(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_dir():
        reason = f"{path} not found (it ships beside the checkout in CI only)"
        if os.environ.get("CI") == "1":
            pytest.fail(f"CI=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """``../shared/golden``: the authors' code's outputs, see its README."""
    return _shared_folder("golden")


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    """``../shared/datasets/benchmark``: Set5 and Set14 HR images, ``<Set>/x<s>/img_XXX.png``."""
    return _shared_folder("datasets/benchmark")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The tiny run's data, shared by every test that trains: ``DF2K/HR`` (three 40x44 noise
    images) and ``benchmark/Set5/HR`` (two 32x36), where ``--dir_data`` finds them. Read-only."""
    from helpers import write_data_root
    return write_data_root(tmp_path_factory.mktemp("data"), [(40, 44)] * 3, [(32, 36)] * 2, seed=1)


@pytest.fixture(autouse=True)
def _fresh_run_logger():
    """Entry points run in-process attach handlers to the 'cdsr' logger (a run's log file, a
    captured stderr); drop them after each test so the next one does not write through them."""
    yield
    logger = logging.getLogger("cdsr")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:
            pass
