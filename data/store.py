"""The decoded store (``--data_cache DIR``): every training image decoded once into raw pixels
that the loader reads window by window, without decoding or reading the whole image.

One store folder per training folder, ``DIR/<name>-<8 hex digits of its absolute path>/``:

- ``<file name>.npy`` per source image: uint8 (H, W, 3) RGB in C order, exactly what
  ``data.images.read_image`` returns (grayscale, RGBA and 16-bit files converted the same way);
- ``index.json``: per source file name, its key (size in bytes, mtime in ns) and its (H, W).

Every start lists the folder and compares each file's key with the index: a new or changed image
is decoded (fully, so a corrupt or truncated file is an ``ImageError`` naming it), a removed
one's entry deleted. Each entry's npy header and exact byte size are checked too, so a truncated
or damaged entry is rebuilt, with a warning naming it, and never read (a same-size change of the
pixels inside an entry is not detected). Entries and the index are written to a temporary file
and renamed; processes that share a store (torchrun) take turns through a lock file (``flock``;
where the filesystem refuses file locks, as some NFS and Lustre mounts do, through a file
created exclusively instead); a complete store on a read-only disk is used as it is.
"""
import errno
import hashlib
import json
import logging
import mmap
import os
import socket
import time
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from data.decode_pool import each_decoded
from data.patch_pairs import Corner
from data.images import ImageError, list_images, read_image
from utility import pid_alive

try:
    import fcntl
except ImportError:  # Windows: no lock; do not share one store between processes there
    fcntl = None

log = logging.getLogger("cdsr.data")  # a child of the run's logger, so its lines reach the run log
INDEX = "index.json"
VERSION = 1
SAVE_EVERY = 64  # entries built between two saves of the index, so an interrupted build resumes
NO_FILE_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # flock's "not on this filesystem"


class StoreError(ValueError):
    """The decoded store cannot be written; the message names the path and what to do."""


class StoredImage:
    """An image of the decoded store: ``entry`` holds uint8 (H, W, 3) RGB, C order, from byte
    ``offset`` on. ``windows`` maps the file for the call only, so nothing is decoded, only the
    windows' rows are read, and no open file or map is kept or pickled into DataLoader workers."""

    def __init__(self, entry: Path, shape: Tuple[int, int], offset: int, name: str) -> None:
        self.entry, self.shape, self.offset, self.name = entry, tuple(shape), offset, name

    def windows(self, corners: Sequence[Corner], size: int) -> List[np.ndarray]:
        height, width = self.shape
        expected = self.offset + height * width * 3
        try:
            with open(self.entry, "rb") as file:
                found = os.fstat(file.fileno()).st_size
                if found != expected:  # mapping a truncated file would crash with SIGBUS
                    raise ImageError(f"the decoded store entry {self.entry} changed during "
                                     f"training ({found} bytes, expected {expected}); run again "
                                     "to rebuild it")
                with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    pixels = np.frombuffer(mapped, np.uint8, expected - self.offset, self.offset)
                    pixels = pixels.reshape(height, width, 3)
                    crops = [pixels[top:top + size, left:left + size].copy() for top, left in corners]
                    del pixels  # the map cannot close while an array views it
        except OSError as error:
            raise ImageError(f"cannot read the decoded store entry {self.entry} ({error.strerror}); "
                             "run again to rebuild it") from None
        return crops


def store_folder(cache: Path, folder: Path) -> Path:
    """The store of one training folder: ``cache/<name>-<hash of its absolute path>``, where the
    name is the folder's, or its parent's for a folder called HR (``DF2K/HR`` -> ``DF2K-...``)."""
    folder = Path(folder).resolve()
    name = folder.parent.name if folder.name.upper() == "HR" and folder.parent.name else folder.name
    return Path(cache) / f"{name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"


def entry_name(source: Path) -> str:
    return f"{source.name}.npy"


def source_key(source: Path) -> Dict[str, int]:
    """What identifies one version of a source file: its size in bytes and mtime in ns."""
    stat = source.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def entry_layout(entry: Path) -> Tuple[Tuple[int, int], int]:
    """((H, W), byte offset of the pixels) of a complete store entry. OSError when it cannot be
    opened, ValueError saying what is wrong when it is not a whole uint8 (H, W, 3) C-order npy."""
    with open(entry, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(file)
        except ValueError as error:
            raise ValueError(f"has a damaged header ({error})") from None
        offset, found = file.tell(), os.fstat(file.fileno()).st_size
    if dtype != np.uint8 or fortran_order or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"holds {dtype} {shape}, not uint8 (H, W, 3)")
    expected = offset + int(np.prod(shape))
    if found != expected:
        raise ValueError(f"is truncated or damaged ({found} bytes, expected {expected})")
    return shape[:2], offset


def write_entry(source: Path, root: Path) -> Tuple[Dict[str, int], Tuple[int, int]]:
    """Decode ``source`` into its entry in the store ``root`` -> (its key as read, (H, W)).
    Runs in the build's worker processes."""
    key = source_key(source)  # before reading: a change while decoding shows at the next start
    image = read_image(source)
    _write_atomically(root / entry_name(source), lambda file: np.save(file, image))
    return key, image.shape[:2]


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as file:
            write(file)
        os.replace(temp, path)
    except OSError as error:
        with suppress(OSError):
            temp.unlink()
        raise StoreError(f"cannot write {path} ({error.strerror or error}); free disk space or "
                         "choose a writable --data_cache") from None


def _read_index(root: Path, folder: Path) -> Dict[str, dict]:
    """Source file name -> {size, mtime_ns, shape}; empty for a new, foreign or unreadable index."""
    path = root / INDEX
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data["version"] == VERSION and data["folder"] == str(folder):
            return {name: record for name, record in data["images"].items() if isinstance(record, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning(f"the decoded store index {path} is unreadable ({error}); decoding every image again")
    return {}


def _write_index(root: Path, folder: Path, index: Dict[str, dict]) -> None:
    images = ",\n".join(f"  {json.dumps(name)}: {json.dumps(record)}" for name, record in index.items())
    text = (f'{{"version": {VERSION}, "folder": {json.dumps(str(folder))}, "images": {{\n'
            f"{images}\n}}}}\n")  # one line per image
    _write_atomically(root / INDEX, lambda file: file.write(text.encode()))


@contextmanager
def _exclusive(root: Path) -> Iterator[Optional[OSError]]:
    """Hold the store's lock file; yields None, or why the store cannot be written (then no lock
    is held: a read-only store is only read)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / ".lock", "a")
    except OSError as error:
        yield error
        return
    with handle:
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in NO_FILE_LOCKS:
                raise
            with _held_file(root / ".lock.held", error):
                yield None
            return
        yield None


@contextmanager
def _held_file(path: Path, refused: OSError) -> Iterator[None]:
    """Take turns through ``path``, created exclusively (which works where ``flock`` is
    ``refused``) and holding the owner's pid and host; removed on leaving. A file left by a
    dead process of this host is taken over; one held by another host is waited for, with a
    line every minute naming it (delete it if that process is gone)."""
    log.warning(f"the filesystem of {path.parent} refuses file locks ({refused.strerror}); "
                f"processes take turns through {path} instead")
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    waited = 0
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):       # being written, or just removed
                owner = {}
            if owner.get("host") == me["host"] and not pid_alive(owner.get("pid")):
                log.warning(f"taking over {path}, left by pid {owner.get('pid')}, which is gone")
                path.unlink(missing_ok=True)
                continue
            if waited % 60 == 0:
                log.warning(f"waiting for {path}, held by pid {owner.get('pid')} on "
                            f"{owner.get('host')}; delete it if that process is gone")
            time.sleep(1)
            waited += 1
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(me, file)
        yield
    finally:
        path.unlink(missing_ok=True)


def _usable_entry(root: Path, source: Path, record: Optional[dict]) -> Optional[StoredImage]:
    """The source's entry when it is up to date and whole; None (after saying why, when the
    entry was damaged) when it must be decoded again."""
    if record is None:
        return None
    key = source_key(source)
    if (record.get("size"), record.get("mtime_ns")) != (key["size"], key["mtime_ns"]):
        log.info(f"{source} changed since it was decoded into the store; decoding it again")
        return None
    entry = root / entry_name(source)
    try:
        shape, offset = entry_layout(entry)
        if list(shape) != record.get("shape"):
            raise ValueError(f"holds a {shape[0]}x{shape[1]} image, the index says {record.get('shape')}")
    except OSError as error:
        problem = f"cannot be read ({error.strerror})"
    except ValueError as error:
        problem = str(error)
    else:
        return StoredImage(entry, shape, offset, str(source))
    log.warning(f"decoded store entry {entry} {problem}; rebuilding it from {source}")
    return None


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e3:.1f} kB"


def update_store(folder: Path, cache: Path, workers: int = 0) -> List[StoredImage]:
    """The images of ``folder`` (sorted by name) from its store under ``cache``, brought up to
    date first (see the module docstring): images to decode are decoded in ``workers``
    processes with a progress bar. Logs the store's disk cost. Raises ImageError naming an
    unusable image (the other images stay decoded), StoreError when the store cannot be written."""
    files = list_images(folder)
    folder, root = Path(folder).resolve(), store_folder(cache, folder)
    started = time.perf_counter()
    with _exclusive(root) as unwritable:
        index = _read_index(root, folder)
        stored = {path.name: _usable_entry(root, path, index.get(path.name)) for path in files}
        todo = [path for path in files if stored[path.name] is None]
        removed = sorted(set(index) - set(stored))
        if todo and unwritable is not None:
            reason = unwritable.strerror or unwritable
            raise StoreError(f"cannot write the decoded store {root} ({reason}) and {len(todo)} "
                             "images need decoding into it; choose a writable --data_cache")
        if unwritable is None and (todo or removed):
            _update(root, folder, files, index, todo, removed, workers)
        for path in todo:
            shape, offset = entry_layout(root / entry_name(path))
            stored[path.name] = StoredImage(root / entry_name(path), shape, offset, str(path))
    images = [stored[path.name] for path in files]
    on_disk = sum(image.offset + image.shape[0] * image.shape[1] * 3 for image in images)
    log.info(f"decoded store {root}: {len(images)} images, {_size(on_disk)} on disk "
             f"({_size(sum(path.stat().st_size for path in files))} as image files)"
             + (f"; decoded {len(todo)} in {time.perf_counter() - started:.0f} s" if todo else ""))
    return images


def _update(root: Path, folder: Path, files: List[Path], index: Dict[str, dict],
            todo: List[Path], removed: List[str], workers: int) -> None:
    """Decode ``todo`` into the store and forget ``removed``, keeping ``index`` in step; the
    index is saved every SAVE_EVERY entries and at the end, also when a file fails, so what
    was built is kept. Entries of files no longer in ``files`` are deleted."""
    for name in removed + [path.name for path in todo]:
        index.pop(name, None)
    try:
        if todo:
            built = each_decoded(partial(write_entry, root=root), todo, workers,
                                 f"decoding {root.name} into the store")
            for n, (i, (key, shape)) in enumerate(built, 1):
                index[todo[i].name] = dict(key, shape=list(shape))
                if n % SAVE_EVERY == 0:
                    _write_index(root, folder, index)
    finally:
        _write_index(root, folder, index)
    expected = {entry_name(path) for path in files}
    for entry in root.glob("*.npy"):
        if entry.name not in expected:
            entry.unlink()


def store_sources(folders: Sequence[Path], cache: Path, workers: int = 0) -> List[StoredImage]:
    """All images of ``folders``, read from their decoded stores under ``cache`` (built or
    updated first, see ``update_store``)."""
    return [image for folder in folders for image in update_store(folder, cache, workers)]
