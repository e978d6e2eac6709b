"""Training data: pairs of random HR patches from HR images (DF2K-style folders, the decoded
store of ``data.store``, or arrays in memory).

Each item is one image's two patches (query and key) for the contrastive encoder and the random
parameters of their shared degradation; the degradation itself is applied later, batched on the
training device (``Trainer.train_epoch``), so workers only crop, flip and draw a few numbers.

An image is a *patch source* (``PatchSource``): its ``name`` (for messages), its ``shape`` (H, W) and
``windows(corners, size)``, the square uint8 (size, size, 3) RGB windows at the given top-left
corners. Crop positions depend on the shape alone, so every kind of source of the same picture
gives the same items.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
from PIL import Image as PILImage
import torch
from torch.utils.data import Dataset, get_worker_info

from data.decode_pool import each_decoded
from data.images import ImageError, list_images, read_image

Corner = Tuple[int, int]  # (top, left)


class PatchSource(Protocol):
    """What training patches are cut from (see the module docstring)."""
    name: str
    shape: Tuple[int, int]

    def windows(self, corners: Sequence[Corner], size: int) -> List[np.ndarray]:
        ...


class ArrayImage:
    """An image in memory: uint8 (H, W, 3) RGB."""

    def __init__(self, array: np.ndarray, name: str) -> None:
        self.array, self.name, self.shape = array, name, tuple(array.shape[:2])

    def windows(self, corners: Sequence[Corner], size: int) -> List[np.ndarray]:
        return [self.array[top:top + size, left:left + size] for top, left in corners]


class FileImage:
    """An image file, decoded whole at every read (``shape`` is its (H, W), known from the
    start-up check)."""

    def __init__(self, path: Path, shape: Tuple[int, int]) -> None:
        self.path, self.shape, self.name = path, tuple(shape), str(path)

    def windows(self, corners: Sequence[Corner], size: int) -> List[np.ndarray]:
        image = read_image(self.path)
        if image.shape[:2] != self.shape:
            raise ImageError(f"image {self.path} changed during training (now {image.shape[0]}x"
                             f"{image.shape[1]}, was {self.shape[0]}x{self.shape[1]}); restart")
        return [image[top:top + size, left:left + size] for top, left in corners]


def decoded_shape(path: Path) -> Tuple[int, int]:
    """(H, W) of an image file, decoded in full (ImageError naming it when it cannot be)."""
    return read_image(path).shape[:2]


def header_shape(path: Path) -> Tuple[int, int]:
    """(H, W) of an image file from its header alone (ImageError naming it when unreadable)."""
    try:
        with PILImage.open(path) as image:
            width, height = image.size
    except Exception as error:  # PIL raises many types for bad files
        raise ImageError(f"cannot read image {path} ({error}); remove or replace it") from None
    return height, width


def folder_sources(folders: List[Path], workers: int = 0, full_check: bool = True) -> List[FileImage]:
    """All images in the given folders (each must exist and hold images), every one decoded in
    full once here, in ``workers`` processes with a progress bar, so a corrupt, truncated or
    unsupported file stops training before it starts, named (``ImageError``). Without
    ``full_check`` (the other processes of a torchrun job on a machine whose first process
    checks) only the headers are read."""
    files = [path for folder in folders for path in list_images(folder)]
    if not full_check:
        return [FileImage(path, header_shape(path)) for path in files]
    shapes = dict(each_decoded(decoded_shape, files, workers, "checking training images"))
    return [FileImage(path, shapes[i]) for i, path in enumerate(files)]


def random_corner(height: int, width: int, size: int,
                  generator: Optional[torch.Generator] = None) -> Corner:
    """Top-left corner of a uniformly random size x size window of an H x W image."""
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


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


class WorkerImageError(ImageError):
    """An ImageError raised in a DataLoader worker. The DataLoader re-raises it in the main
    process as ``WorkerImageError("Caught ... Original Traceback ...: <message>")``; this keeps
    just ``<message>``, so the user reads the one line naming the file."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class PatchPairs(Dataset):
    """``length`` items; item i samples image ``i % n`` and returns
    ``{"hr": uint8 (2, 3, P, P)}`` with P = ``hr_patch_size`` (two independent random patches,
    each randomly flipped/transposed when ``augment``) and, with a ``degradation`` (e.g.
    ``data.degradation.TrainingDegradation``), its per-image draw for LR patches of
    ``lr_patch_size``: ``"params"`` and ``"noise"`` (see its ``draw``).

    ``sources`` are image sources (``FileImage``, ``data.store.StoredImage``, ...) or uint8
    (H, W, 3) arrays, named by ``names`` in messages. Item i draws everything from one
    generator seeded with (``seed``, i), in a fixed order: two patch corners, the flips, the
    degradation; so an item depends neither on the number of workers or processes, nor on the
    batch it lands in, nor on the kind of source.
    """

    def __init__(self, sources: Sequence[Union[PatchSource, np.ndarray]], hr_patch_size: int,
                 length: int, augment: bool = True, names: Sequence[str] = (), seed: int = 0,
                 degradation: Optional[Callable] = None, lr_patch_size: int = 0) -> None:
        if not sources:
            raise ImageError("the training set is empty")
        if degradation is not None and lr_patch_size < 1:
            raise ValueError("a degradation draw needs the LR patch size")
        names = list(names) or [f"image {i}" for i in range(len(sources))]
        self.sources = [ArrayImage(s, names[i]) if isinstance(s, np.ndarray) else s
                        for i, s in enumerate(sources)]
        self.patch = hr_patch_size
        self.length = length
        self.augment = augment
        self.seed = seed
        self.degradation = degradation
        self.lr_patch = lr_patch_size
        for source in self.sources:
            h, w = source.shape
            if min(h, w) < hr_patch_size:
                raise ImageError(f"{source.name} is {h}x{w}, smaller than the HR patch "
                                 f"{hr_patch_size}x{hr_patch_size}; remove it or lower --patch_size")

    def __len__(self) -> int:
        return self.length

    def set_seed(self, seed: int) -> None:
        """Draw a new set of patches (call once per epoch, before creating the loader)."""
        self.seed = seed

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        source = self.sources[index % len(self.sources)]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        corners = [random_corner(*source.shape, self.patch, generator) for _ in range(2)]
        try:
            windows = source.windows(corners, self.patch)
        except ImageError as error:
            if get_worker_info() is None:
                raise
            raise WorkerImageError(str(error)) from None
        patches = [torch.from_numpy(np.ascontiguousarray(w)).permute(2, 0, 1) for w in windows]
        if self.augment:
            patches = [random_flip_rotate(p, generator) for p in patches]
        item = {"hr": torch.stack([p.contiguous() for p in patches])}
        if self.degradation is not None:
            item.update(self.degradation.draw(generator, (2, 3, self.lr_patch, self.lr_patch)))
        return item
