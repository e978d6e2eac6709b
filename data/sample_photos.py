"""The embedded sample set: real photos shipped inside the scikit-image and matplotlib wheels.

With no ``--dir_data`` the framework trains on these and evaluates on held-out ones, so a fresh
clone can run end to end with nothing downloaded. Files are read from the installed packages at
run time; nothing is copied into the repository.
"""
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from data.images import ImageError, centre_crop, read_image

# (package, file name). Colour photos first; grayscale ones become three equal channels.
TRAIN_PHOTOS = [
    ("skimage", "astronaut.png"), ("skimage", "motorcycle_left.png"),
    ("skimage", "motorcycle_right.png"), ("skimage", "rocket.jpg"), ("skimage", "retina.jpg"),
    ("skimage", "ihc.png"), ("skimage", "hubble_deep_field.jpg"), ("skimage", "camera.png"),
    ("skimage", "brick.png"), ("skimage", "grass.png"), ("skimage", "gravel.png"),
    ("matplotlib", "grace_hopper.jpg"),
]
HELD_OUT_PHOTOS = [("skimage", "chelsea.png"), ("skimage", "coffee.png")]
# Held-out photos are centre-cropped to this HR size so CPU evaluation takes seconds.
HELD_OUT_SIZE = 192


def _package_folder(package: str) -> Path:
    if package == "skimage":
        import skimage
        return Path(skimage.__file__).parent / "data"
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data"


def _load(photos: List[Tuple[str, str]]) -> Dict[str, np.ndarray]:
    images = {}
    for package, name in photos:
        path = _package_folder(package) / name
        if path.is_file():
            images[Path(name).stem] = read_image(path)
    if not images:
        raise ImageError("none of the photos bundled with scikit-image/matplotlib were found; "
                         "install them (pip install -r requirements.txt) or pass --dir_data")
    return images


def training_photos() -> Dict[str, np.ndarray]:
    """name -> uint8 (H,W,3) RGB, the photos used for training."""
    return _load(TRAIN_PHOTOS)


def held_out_photos() -> Dict[str, np.ndarray]:
    """name -> uint8 (<=192, <=192, 3) RGB centre crops of the photos kept for evaluation."""
    return {name: centre_crop(image, HELD_OUT_SIZE) for name, image in _load(HELD_OUT_PHOTOS).items()}
