"""Evaluation sets under a test protocol: one dataset degraded by one protocol setting."""
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from data.benchmark import modcrop
from data.images import read_image, to_tensor
from data.protocols import Setting, read_testset

PROTOCOL_SEED = 0    # noise seed of on-the-fly protocol sets: scripts/make_testsets.py's default
ImageSource = Union[Path, np.ndarray]


class SettingSet(Dataset):
    """One dataset under one protocol setting; items ``{"name", "lr" (3,h,w), "hr" (3,s*h,s*w)}``
    float 0..255. The LR is ``setting.degrade`` of the HR (noise seeded from PROTOCOL_SEED, the
    image and the setting, so it equals scripts/make_testsets.py's files) unless ``lr_images``
    (uint8 arrays read from a test-set folder) are given."""

    def __init__(self, dataset: str, setting: Setting, images: Sequence[Tuple[str, ImageSource]],
                 lr_images: Optional[Sequence[np.ndarray]] = None) -> None:
        self.name = f"{dataset}/{setting.label}"
        self.dataset = dataset
        self.setting = setting
        self.images = list(images)
        self.lr_images = None if lr_images is None else list(lr_images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, object]:
        name, source = self.images[index]
        hr = modcrop(read_image(source) if isinstance(source, Path) else source, self.setting.scale)
        if self.lr_images is None:
            lr = self.setting.degrade(hr, seed=PROTOCOL_SEED, image_name=name)
        else:
            lr = self.lr_images[index]
        if (lr.shape[0] * self.setting.scale, lr.shape[1] * self.setting.scale) != hr.shape[:2]:
            raise ValueError(f"{self.name}/{name}: LR {lr.shape[:2]} is not HR {hr.shape[:2]} / "
                             f"{self.setting.scale}")
        return {"name": name, "lr": to_tensor(lr), "hr": to_tensor(hr)}


class Row(NamedTuple):
    """One evaluated set: table row (setting label), column (dataset) and the set itself."""
    label: str
    dataset: str
    test_set: Dataset


def read_protocol_sets(root: Path, dataset: str, settings: Sequence[Setting]) -> List[SettingSet]:
    """The settings' sets of ``dataset`` from ROOT/<protocol>/<dataset>_x<scale>/ (written by
    scripts/make_testsets.py or MANet's prepare_testset.py)."""
    protocol, scale = settings[0].protocol, settings[0].scale
    set_dir = Path(root) / protocol / f"{dataset}_x{scale}"
    grouped: Dict[str, list] = {}
    for pair in read_testset(set_dir, sorted({s.folder for s in settings})):
        grouped.setdefault(pair.setting.label, []).append(pair)
    missing = [s.label for s in settings if s.label not in grouped]
    if missing:
        raise FileNotFoundError(
            f"{set_dir} lacks the LR images of {', '.join(missing)}; write them with python "
            f"scripts/make_testsets.py --protocol {protocol} --name {dataset} --scale {scale} --out {root} "
            "--hr_dir HR_FOLDER")
    return [SettingSet(dataset, s, [(p.name, p.hr) for p in grouped[s.label]],
                       [p.lr for p in grouped[s.label]]) for s in settings]


def protocol_rows(settings: Sequence[Setting], per_dataset: Dict[str, Sequence[SettingSet]]) -> List[Row]:
    """Rows in table order: setting by setting, each across the datasets."""
    return [Row(s.label, name, sets[i]) for i, s in enumerate(settings)
            for name, sets in per_dataset.items()]
