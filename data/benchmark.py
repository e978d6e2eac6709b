"""Evaluation sets: HR images whose LR input is made by one fixed, seeded degradation."""
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import read_image, to_tensor

Degrade = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """(H,W,C) -> (H - H % scale, W - W % scale, C), cropping bottom/right."""
    h, w = image.shape[:2]
    return image[:h - h % scale, :w - w % scale]


class BenchmarkSet(Dataset):
    """Items ``{"name": str, "lr": float (3,h,w), "hr": float (3,s*h,s*w)}`` in 0..255.

    ``images`` are (name, path or uint8 (H,W,3) array) pairs. The HR is cropped to a multiple of
    ``scale``; the LR is ``degrade(hr)`` with noise seeded from ``seed`` and the image name, so
    every LR image is the same whatever the order or subset evaluated.
    """

    def __init__(self, name: str, images: Sequence[Tuple[str, Union[Path, np.ndarray]]],
                 scale: int, degrade: Degrade, seed: int = 0) -> None:
        self.name = name
        self.images = list(images)
        self.scale = scale
        self.degrade = degrade
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, object]:
        name, source = self.images[index]
        image = read_image(source) if isinstance(source, Path) else source
        hr = to_tensor(modcrop(image, self.scale))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        lr = self.degrade(hr[None], generator)[0]
        return {"name": name, "lr": lr, "hr": hr}


def named_files(files: List[Path]) -> List[Tuple[str, Path]]:
    return [(path.stem, path) for path in files]
