"""Test-set folders on disk: benchmark HR folders, and protocol LR images written and read back.

A test set of protocol P, dataset D and scale s is written to ``ROOT/D_x<s>/`` for ``cdsr`` (the
layout of MANet's ``prepare_testset.py`` and the CDSR README's ``SRTestset``) and to
``ROOT/P/D_x<s>/`` for the others. It holds ``HR_si/{image}.png`` (HR cropped to a multiple of
s), ``LR_mode0_noise<n>/{image}_{suffix}.png``, for spatially variant modes ``HR_sv/`` and
``LR_mode<k>_noise<n>/{image}.png``, and ``manifest.json`` (protocol, kernel parameters, seed,
noise, HR source, image names and sizes). Folders written by MANet's script (no manifest) are
read too, their settings parsed from the file names. Reading gives ``EvalSet``s.
"""
import json
import logging
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from data.eval_set import EVAL_SEED, EvalSet
from data.images import IMAGE_SUFFIXES, list_images, read_image, write_png
from data.protocols import NOTES, cdsr_setting, protocol_settings
from data.setting import Setting, modcrop

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "cdsr-framework-testset/1"
FLAT_PROTOCOLS = ("cdsr",)   # written as ROOT/<D>_x<s>/, as MANet's script and SRTestset do


def find_hr_dir(root: Path, dataset: str, scale: int) -> Path:
    """HR folder of ``dataset``: ROOT/D/x<S>/, else ROOT/D/HR/, else ROOT/D/ (the first that
    holds images). Raises FileNotFoundError naming every folder tried."""
    tried = [Path(root) / dataset / f"x{scale}", Path(root) / dataset / "HR", Path(root) / dataset]
    for folder in tried:
        if folder.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return folder
    raise FileNotFoundError(f"no HR images for dataset '{dataset}' at x{scale}: tried "
                            + ", ".join(str(t) for t in tried))


def testset_dir(root: Path, protocol: str, dataset: str, scale: int) -> Path:
    """Where ``write_testset`` puts a set: ROOT/D_x<s> for cdsr, ROOT/<protocol>/D_x<s> otherwise."""
    folder = f"{dataset}_x{scale}"
    return Path(root) / folder if protocol in FLAT_PROTOCOLS else Path(root) / protocol / folder


def _read_manifest(set_dir: Path) -> Optional[dict]:
    path = set_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete the folder and regenerate it") from error


def write_testset(protocol: str, hr_dir: Path, name: str, scale: int, out_root: Path,
                  noise: Optional[float] = None, seed: int = EVAL_SEED,
                  sv_modes: Optional[Sequence[int]] = None) -> Path:
    """Write the LR images of ``protocol`` for every HR image in ``hr_dir``.

    -> the set folder ``testset_dir(out_root, protocol, name, scale)`` (see module docstring).
    sv_modes None means (1, 2, 3, 4, 5) for ``cdsr`` on a set named B100 and none otherwise. A
    second call for other noise levels adds its LR folders to the same manifest; the HR source
    must match.
    """
    if sv_modes is None:
        sv_modes = (1, 2, 3, 4, 5) if (protocol == "cdsr" and name == "B100") else ()
    settings = protocol_settings(protocol, scale, noise, sv_modes)
    files = list_images(hr_dir)
    set_dir = testset_dir(out_root, protocol, name, scale)
    manifest = _read_manifest(set_dir)
    source = str(Path(hr_dir).resolve())
    if manifest is not None and (manifest.get("hr_source") != source or manifest.get("protocol") != protocol):
        raise ValueError(f"{set_dir} was made from {manifest.get('hr_source')} with protocol "
                         f"{manifest.get('protocol')}; choose another output folder or delete it")
    originals = [(path.stem, read_image(path)) for path in files]   # every image readable before writing any
    images = [{"name": path.stem, "file": path.name, "source_size": list(image.shape[:2]),
               "size": list(modcrop(image, scale).shape[:2])} for path, (_, image) in zip(files, originals)]
    for hr_folder in sorted({s.hr_folder for s in settings}):
        for image, original in originals:
            write_png(set_dir / hr_folder / f"{image}.png", modcrop(original, scale))
    for setting in tqdm(settings, desc=f"{protocol} {name} x{scale}", leave=False):
        eval_set = EvalSet(name, setting, originals, seed=seed)    # the LR test.py would generate
        for index in range(len(eval_set)):
            image, lr, _ = eval_set.pair(index)
            write_png(set_dir / setting.folder / setting.lr_name(image), lr)
    folders = dict(manifest["lr_folders"]) if manifest else {}
    for setting in settings:
        folders[setting.folder] = {"seed": seed, "noise": setting.noise, "hr_folder": setting.hr_folder,
                                   "settings": []}
    for setting in settings:
        folders[setting.folder]["settings"].append(
            {"label": setting.label, "file_suffix": setting.suffix, "noise": setting.noise,
             "params": setting.params})
    manifest = {"format": FORMAT, "protocol": protocol, "name": name, "scale": scale, "hr_source": source,
                "images": images, "lr_folders": dict(sorted(folders.items())), "notes": NOTES[protocol],
                "software": {"torch": torch.__version__, "numpy": np.__version__}}
    (set_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info("wrote %s: %d images x %d settings", set_dir, len(files), len(settings))
    return set_dir


# ----------------------------------------------------------------------------- reading
_MANET_NAME = re.compile(r"^(?P<image>.+)_(?P<sig1>\d+\.\d)_(?P<sig2>\d+\.\d)_(?P<theta>\d+\.\d)$")
_LR_FOLDER = re.compile(r"^LR_mode(?P<mode>\d+)_noise(?P<noise>\d+(?:\.\d+)?)$")


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"test set image {path} does not exist")
    return path


def _read_foreign(set_dir: Path, dataset: str, lr_folders: Optional[Sequence[str]]) -> List[EvalSet]:
    """Sets of a folder made by MANet's script: HR_si|HR_sv|HR and LR_mode<k>_noise<n> folders;
    ``{image}_{sig1}_{sig2}_{theta}.png`` files are the cdsr protocol's settings, any other
    LR folder is one setting named after the folder."""
    folders = lr_folders or sorted(p.name for p in set_dir.iterdir() if p.is_dir() and p.name.startswith("LR"))
    if not folders:
        raise FileNotFoundError(f"{set_dir} holds no LR_* folders and no {MANIFEST}")
    grouped: Dict[str, tuple] = {}
    for folder in folders:
        mode = _LR_FOLDER.match(folder)
        noise = float(mode["noise"]) if mode else 0.0
        preferred = ("HR_sv", "HR") if (mode and int(mode["mode"]) > 0) else ("HR_si", "HR")
        hr_dir = next((set_dir / f for f in preferred if (set_dir / f).is_dir()), None)
        if hr_dir is None:
            raise FileNotFoundError(f"no HR folder for {set_dir / folder}: tried {', '.join(preferred)}")
        lr_files = list_images(set_dir / folder)
        scale = read_image(_hr_of(hr_dir, lr_files[0])).shape[0] // read_image(lr_files[0]).shape[0]
        for path in lr_files:
            match = _MANET_NAME.match(path.stem)
            if match:
                theta = math.pi / 4 if match["theta"] == "0.8" else float(match["theta"])
                setting = replace(cdsr_setting(float(match["sig1"]), float(match["sig2"]), theta,
                                               scale, noise), folder=folder)
            else:
                setting = Setting(folder, {"convention": "unknown", "scale": scale, "noise": noise},
                                  folder=folder)
            image = match["image"] if match else path.stem
            entry = grouped.setdefault(setting.label, (setting, [], []))
            entry[1].append((image, _hr_of(hr_dir, path)))
            entry[2].append(path)
    return [EvalSet(dataset, s, images, lrs) for s, images, lrs in grouped.values()]


def _hr_of(hr_dir: Path, lr_path: Path) -> Path:
    """The HR file of a MANet-script LR file: an HR copy of the same name, else ``{image}.png``."""
    same_name = hr_dir / lr_path.name
    match = _MANET_NAME.match(lr_path.stem)
    return _existing(same_name if same_name.is_file() or not match else hr_dir / f"{match['image']}.png")


def read_testset(set_dir: Path, lr_folders: Optional[Sequence[str]] = None,
                 dataset: Optional[str] = None) -> List[EvalSet]:
    """One ``EvalSet`` per setting of a set folder made by ``write_testset`` (read through its
    manifest) or by MANet's ``prepare_testset.py`` (settings parsed from the file names), images
    read when used. lr_folders: only these LR folders (default: all). dataset: the sets' dataset
    name (default: the manifest's, else the folder name without ``_x<s>``)."""
    set_dir = Path(set_dir)
    if not set_dir.is_dir():
        raise FileNotFoundError(f"test set folder {set_dir} does not exist")
    manifest = _read_manifest(set_dir)
    if manifest is None:
        return _read_foreign(set_dir, dataset or re.sub(r"_x\d+$", "", set_dir.name), lr_folders)
    dataset = dataset or manifest["name"]
    sets = []
    for folder, entry in manifest["lr_folders"].items():
        if lr_folders and folder not in lr_folders:
            continue
        hr = [(image["name"], _existing(set_dir / entry["hr_folder"] / f"{image['name']}.png"))
              for image in manifest["images"]]
        for record in entry["settings"]:
            setting = Setting(record["label"], record["params"], folder=folder, suffix=record["file_suffix"])
            lrs = [_existing(set_dir / folder / setting.lr_name(name)) for name, _ in hr]
            sets.append(EvalSet(dataset, setting, hr, lrs))
    return sets


def find_testset(root: Path, protocol: str, dataset: str, scale: int) -> Path:
    """The set folder of ``dataset`` at ``scale`` for ``protocol`` under ROOT: ROOT/<protocol>/D_x<s>/
    or ROOT/D_x<s>/ (cdsr's layout; MANet's script, the CDSR README's SRTestset) when that one
    holds this protocol's set. FileNotFoundError naming both otherwise."""
    nested, flat = Path(root) / protocol / f"{dataset}_x{scale}", Path(root) / f"{dataset}_x{scale}"
    if nested.is_dir():
        return nested
    if flat.is_dir():
        manifest = _read_manifest(flat)
        if (manifest or {}).get("protocol", "cdsr") == protocol:  # MANet's script writes cdsr sets
            return flat
    raise FileNotFoundError(f"no {protocol} test set of {dataset} x{scale} under {root}: tried {nested} "
                            f"and {flat}; write it with python scripts/make_testsets.py --protocol "
                            f"{protocol} --name {dataset} --scale {scale} --out {root} --hr_dir HR_FOLDER")


def read_protocol_sets(root: Path, protocol: str, dataset: str, settings: Sequence[Setting]) -> List[EvalSet]:
    """The ``settings``' sets of ``dataset`` from its folder under ROOT (``find_testset``), in
    the order of ``settings``."""
    set_dir = find_testset(root, protocol, dataset, settings[0].scale)
    found = {s.setting.label: s for s in read_testset(set_dir, sorted({s.folder for s in settings}), dataset)}
    missing = [s.label for s in settings if s.label not in found]
    if missing:
        raise FileNotFoundError(
            f"{set_dir} lacks the LR images of {', '.join(missing)}; write them with python "
            f"scripts/make_testsets.py --protocol {protocol} --name {dataset} --scale {settings[0].scale} "
            f"--out {root} --hr_dir HR_FOLDER")
    return [EvalSet(dataset, s, found[s.label].images, found[s.label].lr_images) for s in settings]
