"""Test sets: folders of protocol LR images on disk, and the evaluation datasets made of them.

A test set ``OUT/<protocol>/<name>_x<s>/`` holds ``HR_si/{image}.png`` (HR cropped to a multiple
of s), ``LR_mode0_noise<n>/{image}_{suffix}.png``, for spatially variant modes ``HR_sv/`` and
``LR_mode<k>_noise<n>/{image}.png``, and ``manifest.json`` (protocol, kernel parameters, seed,
noise, HR source, image names and sizes). Sets written by MANet's ``prepare_testset.py`` are read
too, their settings parsed from the file names.
"""
import json
import logging
import math
import re
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from data.benchmark import modcrop
from data.images import IMAGE_SUFFIXES, list_images, read_image, to_tensor, write_png
from data.protocols import NOTES, ProtocolPair, Setting, base_params, noise_tag, protocol_settings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "cdsr-framework-testset/1"
PROTOCOL_SEED = 0    # noise seed of on-the-fly protocol sets: scripts/make_testsets.py's default
ImageSource = Union[Path, np.ndarray]


def find_hr_dir(root: Path, dataset: str, scale: int) -> Path:
    """HR folder of ``dataset``: ROOT/D/x<S>/, else ROOT/D/HR/, else ROOT/D/ (the first that
    holds images). Raises FileNotFoundError naming every folder tried."""
    tried = [Path(root) / dataset / f"x{scale}", Path(root) / dataset / "HR", Path(root) / dataset]
    for folder in tried:
        if folder.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return folder
    raise FileNotFoundError(f"no HR images for dataset '{dataset}' at x{scale}: tried "
                            + ", ".join(str(t) for t in tried))


def _setting_record(setting: Setting) -> dict:
    return {"label": setting.label, "file_suffix": setting.suffix, "noise": setting.noise, "params": setting.params}


def _read_manifest(set_dir: Path) -> Optional[dict]:
    path = set_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete the folder and regenerate it") from error


def write_testset(protocol: str, hr_dir: Path, name: str, scale: int, out_root: Path,
                  noise: Optional[float] = None, seed: int = 0,
                  sv_modes: Optional[Sequence[int]] = None) -> Path:
    """Write the LR images of ``protocol`` for every HR image in ``hr_dir``.

    -> the set folder ``out_root/<protocol>/<name>_x<scale>/`` (see module docstring). sv_modes
    None means (1, 2, 3, 4, 5) for ``cdsr`` on a set named B100 and none otherwise. A second call
    for other noise levels adds its LR folders to the same manifest; the HR source must match.
    """
    if sv_modes is None:
        sv_modes = (1, 2, 3, 4, 5) if (protocol == "cdsr" and name == "B100") else ()
    settings = protocol_settings(protocol, scale, noise, sv_modes)
    files = list_images(hr_dir)
    set_dir = Path(out_root) / protocol / f"{name}_x{scale}"
    manifest = _read_manifest(set_dir)
    source = str(Path(hr_dir).resolve())
    if manifest is not None and (manifest.get("hr_source") != source or manifest.get("protocol") != protocol):
        raise ValueError(f"{set_dir} was made from {manifest.get('hr_source')} with protocol "
                         f"{manifest.get('protocol')}; choose another output folder or delete it")
    originals = [read_image(path) for path in files]       # every image readable before writing any
    images = []
    for path, original in tqdm(list(zip(files, originals)), desc=f"{protocol} {name} x{scale}", leave=False):
        hr = modcrop(original, scale)
        images.append({"name": path.stem, "file": path.name, "source_size": list(original.shape[:2]),
                       "size": list(hr.shape[:2])})
        for folder in sorted({s.hr_folder for s in settings}):
            write_png(set_dir / folder / f"{path.stem}.png", hr)
        for setting in settings:
            write_png(set_dir / setting.folder / setting.lr_name(path.stem),
                      setting.degrade(hr, seed=seed, image_name=path.stem))
    folders = dict(manifest["lr_folders"]) if manifest else {}
    for setting in settings:
        folders[setting.folder] = {"seed": seed, "noise": setting.noise, "hr_folder": setting.hr_folder,
                                   "settings": []}
    for setting in settings:
        folders[setting.folder]["settings"].append(_setting_record(setting))
    manifest = {"format": FORMAT, "protocol": protocol, "name": name, "scale": scale, "hr_source": source,
                "images": images, "lr_folders": dict(sorted(folders.items())), "notes": NOTES[protocol],
                "software": {"torch": torch.__version__, "numpy": np.__version__}}
    (set_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info("wrote %s: %d images x %d settings", set_dir, len(files), len(settings))
    return set_dir


# ----------------------------------------------------------------------------- reading
_MANET_NAME = re.compile(r"^(?P<image>.+)_(?P<sig1>\d+\.\d)_(?P<sig2>\d+\.\d)_(?P<theta>\d+\.\d)$")
_LR_FOLDER = re.compile(r"^LR_mode(?P<mode>\d+)_noise(?P<noise>\d+(?:\.\d+)?)$")


def _manet_setting(suffix: str, folder: str, scale: int) -> Setting:
    """Setting of a MANet-script file ``{image}_{sig1}_{sig2}_{theta}.png`` (theta 0.8 = pi/4)."""
    match = _LR_FOLDER.match(folder)
    noise = float(match["noise"]) if match else 0.0
    sig1, sig2, theta = (float(v) for v in suffix.split("_"))
    theta = math.pi / 4 if theta == 0.8 else theta
    params = {**base_params("manet", scale, noise, "replicate", "decimate"), "blur": "aniso",
              "sig1_variance": sig1, "sig2_variance": sig2, "theta_rad": theta, "domain": "unit"}
    return Setting("cdsr", suffix + noise_tag(noise), scale, noise, params, folder, suffix)


def _read_foreign(set_dir: Path, lr_folders: Optional[Sequence[str]]) -> Iterator[ProtocolPair]:
    """Pairs of a set made by MANet's script: HR_si|HR_sv|HR and LR_mode<k>_noise<n> folders."""
    folders = lr_folders or sorted(p.name for p in set_dir.iterdir() if p.is_dir() and p.name.startswith("LR"))
    if not folders:
        raise FileNotFoundError(f"{set_dir} holds no LR_* folders and no {MANIFEST}")
    for folder in folders:
        mode = _LR_FOLDER.match(folder)
        preferred = ("HR_sv", "HR") if (mode and int(mode["mode"]) > 0) else ("HR_si", "HR")
        hr_dir = next((set_dir / f for f in preferred if (set_dir / f).is_dir()), None)
        if hr_dir is None:
            raise FileNotFoundError(f"no HR folder for {set_dir / folder}: tried {', '.join(preferred)}")
        for path in list_images(set_dir / folder):
            match = _MANET_NAME.match(path.stem)
            image = match["image"] if match else path.stem
            same_name = hr_dir / path.name                     # an HR copy per LR file, if any
            hr = read_image(same_name if same_name.is_file() else hr_dir / f"{image}.png")
            lr = read_image(path)
            scale = hr.shape[0] // lr.shape[0]
            if match:
                setting = _manet_setting(path.stem[len(match["image"]) + 1:], folder, scale)
            else:
                setting = Setting("unknown", folder, scale, 0.0, {"convention": "unknown"}, folder, "")
            yield ProtocolPair(image, setting, lr, hr)


def read_testset(set_dir: Path, lr_folders: Optional[Sequence[str]] = None) -> Iterator[ProtocolPair]:
    """Yield (image name, setting, lr uint8, hr uint8) for a set folder made by ``write_testset``
    (read through its manifest) or by MANet's ``prepare_testset.py`` (settings parsed from the
    file names). lr_folders: only these LR folders (default: all)."""
    set_dir = Path(set_dir)
    if not set_dir.is_dir():
        raise FileNotFoundError(f"test set folder {set_dir} does not exist")
    manifest = _read_manifest(set_dir)
    if manifest is None:
        yield from _read_foreign(set_dir, lr_folders)
        return
    for folder, entry in manifest["lr_folders"].items():
        if lr_folders and folder not in lr_folders:
            continue
        settings = [Setting(manifest["protocol"], r["label"], manifest["scale"], r["noise"], r["params"],
                            folder, r["file_suffix"]) for r in entry["settings"]]
        for image in manifest["images"]:
            hr = read_image(set_dir / entry["hr_folder"] / f"{image['name']}.png")
            for setting in settings:
                lr = read_image(set_dir / folder / setting.lr_name(image["name"]))
                yield ProtocolPair(image["name"], setting, lr, hr)


# ----------------------------------------------------------------------------- evaluation
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
