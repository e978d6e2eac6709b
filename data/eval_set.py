"""``EvalSet``: dataset D under setting S, the one kind of evaluation set.

Training validation, test.py (a fixed degradation or every setting of a protocol, generated or
read from a test-set folder) and ``scripts/make_testsets.py`` all build these, so a generated LR
image is the same wherever it is made.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from data.images import read_image, to_tensor
from data.setting import Setting, modcrop

EVAL_SEED = 0        # noise seed of generated LR images: scripts/make_testsets.py's default
ImageSource = Union[Path, np.ndarray]  # an image file, or uint8 (H,W,3) RGB


def _read(source: ImageSource) -> np.ndarray:
    return read_image(source) if isinstance(source, Path) else source


class EvalSet(Dataset):
    """HR images of ``dataset`` and their LR under ``setting``.

    images: (name, HR source) pairs; each HR is cropped to a multiple of the scale. lr_images:
    pre-made LR sources in the same order (read from a test-set folder), otherwise the LR is
    ``setting.degrade`` of the HR with noise seeded from (``seed``, image name, setting label).
    ``name`` (unique among the sets evaluated together; default ``<dataset>/<setting label>``)
    names the set in results and SR output folders.

    Items: ``{"name": str, "lr": float (3,h,w), "hr": float (3,s*h,s*w)}``, RGB in 0..255.
    """

    def __init__(self, dataset: str, setting: Setting, images: Sequence[Tuple[str, ImageSource]],
                 lr_images: Optional[Sequence[ImageSource]] = None, *, seed: int = EVAL_SEED,
                 name: Optional[str] = None) -> None:
        self.dataset = dataset
        self.setting = setting
        self.images = list(images)
        self.lr_images = None if lr_images is None else list(lr_images)
        if self.lr_images is not None and len(self.lr_images) != len(self.images):
            raise ValueError(f"{dataset}: {len(self.lr_images)} LR images for {len(self.images)} HR images")
        self.seed = seed
        self.name = name or f"{dataset}/{setting.label}"

    def __len__(self) -> int:
        return len(self.images)

    def image_names(self) -> List[str]:
        return [name for name, _ in self.images]

    def pair(self, index: int) -> Tuple[str, np.ndarray, np.ndarray]:
        """(image name, lr uint8 (h,w,3), hr uint8 (s*h,s*w,3)) of image ``index``."""
        name, source = self.images[index]
        scale = self.setting.scale
        hr = modcrop(_read(source), scale)
        if self.lr_images is None:
            lr = self.setting.degrade(hr, seed=self.seed, image_name=name)
        else:
            lr = _read(self.lr_images[index])
        if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
            raise ValueError(f"{self.name}/{name}: LR {lr.shape[:2]} is not HR {hr.shape[:2]} / {scale}")
        return name, lr, hr

    def __getitem__(self, index: int) -> Dict[str, object]:
        name, lr, hr = self.pair(index)
        return {"name": name, "lr": to_tensor(lr), "hr": to_tensor(hr)}
