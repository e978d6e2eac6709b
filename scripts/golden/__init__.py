"""Golden-vector checks: this project against the numbers of the authors' code.

One module per group, each returning ``GoldenResult(name, max_error, tolerance, passed, unit)``
records for whatever cases its folder holds:

* ``models``: eval forward of CDSR/DASR (``{name}_keys_x{s}.json`` + ``{name}_x{s}_*`` files);
* ``kdsr``: eval forward and features of KDSR teachers and students, and the distillation loss
  (``kdsr_index.json``, made by ``scripts/golden/kdsr.py``);
* ``kdsr_train``: one step of each of the authors' KDSR stages through our trainer (the same
  index's ``train`` entries; ``kdsr_train``);
* ``degradations``: ``degradation_index.json``;
* ``metrics``: ``metrics.json``;
* ``manet``: ``manet_protocol/<Set>/x<s>/`` against HR images of an ``hr_root``;
* ``train``: ``train/train_index.json`` (training steps through our trainer; the comparison
  rules in ``train_compare``).

``discover(golden_dir, hr_root)`` lists the groups present as ``{group: check()}``; it is what
``scripts/verify_golden.py`` runs. Import with the repository root on ``sys.path``.
"""
from pathlib import Path
from typing import Callable, Optional

from .common import GoldenResult
from .degradations import check_degradation_goldens
from .kdsr_models import check_kdsr_goldens, has_kdsr_goldens, read_index
from .kdsr_train import check_kdsr_training_steps
from .manet import check_manet_protocol, manet_folders
from .metrics import check_metric_goldens
from .models import check_model_goldens, model_cases
from .train import check_train_goldens

__all__ = ["GoldenResult", "discover", "check_model_goldens", "check_degradation_goldens",
           "check_metric_goldens", "check_manet_protocol", "check_train_goldens",
           "check_kdsr_goldens", "check_kdsr_training_steps"]


def discover(golden_dir: Path,
             hr_root: Optional[Path] = None) -> tuple[dict[str, Callable[[], list]], list[str]]:
    """({group: zero-argument check} for the groups ``golden_dir`` holds, [notes on groups that
    are present but cannot run])."""
    golden_dir = Path(golden_dir)
    checks: dict[str, Callable[[], list]] = {}
    notes = []
    if model_cases(golden_dir):
        checks["models"] = lambda: check_model_goldens(golden_dir)
    if has_kdsr_goldens(golden_dir):
        checks["kdsr"] = lambda: check_kdsr_goldens(golden_dir)
        if read_index(golden_dir).get("train"):
            checks["kdsr_train"] = lambda: check_kdsr_training_steps(golden_dir)
    if (golden_dir / "degradation_index.json").is_file():
        checks["degradations"] = lambda: check_degradation_goldens(golden_dir)
    if (golden_dir / "metrics.json").is_file():
        checks["metrics"] = lambda: check_metric_goldens(golden_dir)
    if manet_folders(golden_dir / "manet_protocol"):
        if hr_root is None:
            notes.append("manet_protocol/ skipped: it needs --hr_root (the HR images)")
        else:
            checks["manet"] = lambda: check_manet_protocol(golden_dir / "manet_protocol", Path(hr_root))
    if (golden_dir / "train" / "train_index.json").is_file():
        checks["train"] = lambda: check_train_goldens(golden_dir)
    return checks, notes
