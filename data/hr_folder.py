"""Training data: pairs of random HR patches from HR images (DF2K-style folders or in memory).

Each item is one image's two patches (query and key) for the contrastive encoder and the random
parameters of their shared degradation; the degradation itself is applied later, batched on the
training device (see ``trainer.py``), so workers only crop, flip and draw a few numbers.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset

from data.images import ImageError, list_images, read_image

Source = Union[Path, np.ndarray]


def image_size(path: Path) -> tuple:
    """(H, W) of an image file from its header; ImageError if it cannot be opened."""
    try:
        with PILImage.open(path) as image:
            width, height = image.size
    except Exception as error:  # PIL raises many types for bad files
        raise ImageError(f"cannot read image {path} ({error}); remove or replace it") from None
    return height, width


def random_patch(image: torch.Tensor, size: int, generator: torch.Generator = None) -> torch.Tensor:
    """(3,H,W) -> (3,size,size) at a uniformly random position."""
    _, h, w = image.shape
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return image[:, top:top + size, left:left + size]


def random_flip_rotate(patch: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
    """(3,P,P) -> one of its 8 flips/transposes, uniformly."""
    hflip, vflip, transpose = torch.randint(0, 2, (3,), generator=generator).tolist()
    if hflip:
        patch = patch.flip(-1)
    if vflip:
        patch = patch.flip(-2)
    if transpose:
        patch = patch.transpose(-1, -2)
    return patch


class PatchPairs(Dataset):
    """``length`` items; item i samples image ``i % n`` and returns
    ``{"hr": uint8 (2, 3, P, P)}`` with P = ``hr_patch_size`` (two independent random patches,
    each randomly flipped/transposed when ``augment``) and, with a ``degradation`` (e.g.
    ``data.degradation.TrainingDegradation``), its per-image draw for LR patches of
    ``lr_patch_size``: ``"params"`` and ``"noise"`` (see its ``draw``).

    Item i draws everything from one generator seeded with (``seed``, i), so an item depends
    neither on the number of workers or processes nor on the batch it lands in.
    """

    def __init__(self, sources: Sequence[Source], hr_patch_size: int, length: int,
                 augment: bool = True, names: Sequence[str] = (), seed: int = 0,
                 degradation: Optional[Callable] = None, lr_patch_size: int = 0) -> None:
        if not sources:
            raise ImageError("the training set is empty")
        if degradation is not None and lr_patch_size < 1:
            raise ValueError("a degradation draw needs the LR patch size")
        self.sources = list(sources)
        self.patch = hr_patch_size
        self.length = length
        self.augment = augment
        self.seed = seed
        self.degradation = degradation
        self.lr_patch = lr_patch_size
        names = list(names) or [str(s) if isinstance(s, Path) else f"image {i}"
                                for i, s in enumerate(self.sources)]
        for source, name in zip(self.sources, names):
            h, w = image_size(source) if isinstance(source, Path) else source.shape[:2]
            if min(h, w) < hr_patch_size:
                raise ImageError(f"{name} is {h}x{w}, smaller than the HR patch "
                                 f"{hr_patch_size}x{hr_patch_size}; remove it or lower --patch_size")

    def __len__(self) -> int:
        return self.length

    def set_seed(self, seed: int) -> None:
        """Draw a new set of patches (call once per epoch, before creating the loader)."""
        self.seed = seed

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        source = self.sources[index % len(self.sources)]
        image = read_image(source) if isinstance(source, Path) else source
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        patches = [random_patch(image, self.patch, generator) for _ in range(2)]
        if self.augment:
            patches = [random_flip_rotate(p, generator) for p in patches]
        item = {"hr": torch.stack([p.contiguous() for p in patches])}
        if self.degradation is not None:
            item.update(self.degradation.draw(generator, (2, 3, self.lr_patch, self.lr_patch)))
        return item


def folder_sources(folders: List[Path]) -> List[Path]:
    """All images in the given folders (each must exist and hold images)."""
    files: List[Path] = []
    for folder in folders:
        files.extend(list_images(folder))
    return files
