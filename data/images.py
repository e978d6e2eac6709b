"""Image files in and out.

Everything the framework reads goes through :func:`read_image`, which returns one convention:
``uint8`` array, ``(H, W, 3)``, RGB. Grayscale becomes three equal channels, an alpha channel
is dropped (the colour channels of a straight-alpha PNG are the image), 16-bit images are
scaled to 8 bits with rounding.
"""
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PathLike = Union[str, Path]


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


def list_images(folder: PathLike) -> List[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Raises ImageError when the folder is missing or holds no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist; check the path")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(
            f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); check the path")
    return files


def output_pairs(source: PathLike, output: PathLike) -> List[Tuple[Path, Path]]:
    """(input image, ``output/<stem>.png``) for the image file ``source`` or each image in the
    folder ``source``; creates ``output``. ValueError when two inputs share a stem, an output
    would overwrite its input, or ``output`` cannot be created."""
    source, output = Path(source), Path(output)
    files = list_images(source) if source.is_dir() else [source]
    stems = [path.stem for path in files]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise ValueError(f"{source} holds several images named {', '.join(clashes)} (different "
                         "extensions); their outputs would overwrite each other")
    pairs = [(path, output / f"{path.stem}.png") for path in files]
    for path, target in pairs:
        if target.resolve() == path.resolve():
            raise ValueError(f"output folder {output} would overwrite the input {path}; choose another")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the output folder {output}: {error.strerror}; choose a "
                         "writable one") from error
    return pairs


def to_rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Any decoded image (H,W), (H,W,1), (H,W,3) BGR-free RGB or (H,W,4) RGBA, uint8 or uint16
    -> uint8 (H,W,3) RGB."""
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {image.dtype}; use 8- or 16-bit images")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source}: unsupported image shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``uint8`` (H, W, 3) RGB. Raises ImageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = _decode(data) if data.size else None
    if image is not None and image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image is not None and image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    elif image is None and data.size:
        image = _read_with_imageio(path)  # formats OpenCV lacks, e.g. GIF
    if image is None:
        raise ImageError(f"cannot decode image {path}: the file is empty, corrupt or not an image")
    return to_rgb_uint8(image, str(path))


def _read_with_imageio(path: Path):
    """First frame as an RGB(A)/gray array, or None when imageio cannot decode it either."""
    import imageio.v3 as iio
    try:
        with warnings.catch_warnings():  # probing legacy plugins (e.g. DICOM) warns
            warnings.simplefilter("ignore", DeprecationWarning)
            return iio.imread(path, index=0)
    except Exception:  # imageio raises plugin-specific types for undecodable files
        return None


def _decode(data: np.ndarray) -> Optional[np.ndarray]:
    """OpenCV's decoding of a file's bytes, or None; its warnings about a truncated or corrupt
    file are silenced (the caller raises one ImageError naming the file instead)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_image_and_alpha(path: PathLike) -> Tuple[np.ndarray, Optional[np.ndarray], bool]:
    """An image file -> (uint8 (H,W,3) RGB as :func:`read_image` gives it, uint8 (H,W) alpha or
    None, whether the file was grayscale), so an SR result can be written in the input's kind."""
    path = Path(path)
    rgb = read_image(path)
    raw = _decode(np.fromfile(str(path), dtype=np.uint8))
    if raw is None:                       # read by imageio: treat as plain RGB
        return rgb, None, False
    alpha = to_rgb_uint8(raw[:, :, 3], str(path))[:, :, 0] if raw.ndim == 3 and raw.shape[2] == 4 else None
    return rgb, alpha, raw.ndim == 2 or raw.shape[2] == 1


def write_png_like(path: PathLike, image: np.ndarray, alpha: Optional[np.ndarray], gray: bool) -> None:
    """uint8 (H,W,3) RGB -> PNG of the input's kind: one channel (the mean) for a grayscale
    input, RGBA with ``alpha`` bicubic-resized to the image size when given, else RGB."""
    if gray:
        image = np.round(image.astype(np.float64).mean(axis=2)).astype(np.uint8)
    elif alpha is not None:
        size = (image.shape[1], image.shape[0])
        image = np.dstack([image, cv2.resize(alpha, size, interpolation=cv2.INTER_CUBIC)])
    else:
        return write_png(path, image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image if gray else cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), bgr):
        raise ImageError(f"cannot write {path}")


def write_png(path: PathLike, image: np.ndarray) -> None:
    """Write ``uint8`` (H, W, 3) RGB as PNG, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ImageError(f"cannot write {path}")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8`` (H, W, 3) -> float32 (3, H, W) in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) tensor in 0..255 -> ``uint8`` (H, W, 3), clamped and rounded."""
    tensor = tensor.detach().reshape(-1, *tensor.shape[-2:]).clamp(0, 255).round()
    return tensor.byte().permute(1, 2, 0).cpu().numpy()


def centre_box(height: int, width: int, size: Optional[int]) -> Tuple[int, int, int, int]:
    """(top, left, rows, cols) of the centred ``size`` x ``size`` window of a ``height`` x
    ``width`` image, each side clipped to the image; the whole image when ``size`` is None or 0."""
    if not size:
        return 0, 0, height, width
    rows, cols = min(size, height), min(size, width)
    return (height - rows) // 2, (width - cols) // 2, rows, cols


def centre_crop(image: Union[np.ndarray, torch.Tensor], size: Optional[int]):
    """The centred ``size`` x ``size`` window of an image (``centre_box``): an (H, W, C) array
    (channels last, as ``read_image`` gives) or a (..., H, W) tensor (channels first); the
    image itself when ``size`` is None or 0."""
    if not size:
        return image
    channels_last = isinstance(image, np.ndarray)
    top, left, h, w = centre_box(*(image.shape[:2] if channels_last else image.shape[-2:]), size)
    rows, cols = slice(top, top + h), slice(left, left + w)
    return image[rows, cols] if channels_last else image[..., rows, cols]
