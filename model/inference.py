"""Inference policies: pure functions that take a blind-SR model and an LR batch.

The model contract (see ``model/base.py``): ``model.embed(lr) -> (B, D)`` and
``model.super_resolve(lr, embedding) -> (B, 3, s*h, s*w)``, LR in 0..255, SR in 0..255 units
(not clamped). A model with ``needs_hr`` (KDSR's teacher) also reads the HR image: ``predict``
then takes it (``hr``) and hands it, flipped, cropped or whole as the LR is, to ``embed`` and
the forward. Everything here runs on the input's device.

Tiling. Both generators are fully convolutional with stride 1 and take any h, w >= 1, so no
pad-to-multiple is needed. A tiled forward estimates the degradation embedding once (on the whole
image, or on its centred ``embed_crop`` square so memory stays bounded) and runs only the SR
network tile by tile. DASR's SR network is local: with ``overlap`` at least its receptive radius
the tiled output is the untiled one. CDSR's DQA layers pool each feature map over the whole
image, so a tile sees its own means and the output changes; ``global_stats=True`` uses
``model.super_resolve_tiled`` (CDSR only), which keeps the whole-image means (see
``CDSRGenerator.forward_tiled``).
"""
import copy
import queue
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Tuple, TypeVar

import torch
from torch import nn

from data.images import centre_box

Forward = Callable[[torch.Tensor], torch.Tensor]


def self_ensemble(forward: Forward, lr: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """x8 geometric self-ensemble: the mean of ``forward`` over the 8 flips/transposes of
    ``lr`` (B,3,h,w), each result mapped back. Each view runs the whole model, so the
    degradation embedding is re-estimated for the rotated blur, as in the authors' code.
    ``others`` (e.g. a teacher's HR) are viewed the same way and passed after the LR view."""
    def view_of(x: torch.Tensor, transpose: bool, flip_dims: tuple) -> torch.Tensor:
        x = x.transpose(-1, -2) if transpose else x
        return x.flip(flip_dims) if flip_dims else x

    outputs = []
    for transpose in (False, True):
        for flip_dims in ((), (-1,), (-2,), (-2, -1)):
            out = forward(*(view_of(x, transpose, flip_dims) for x in (lr, *others)))
            out = out.flip(flip_dims) if flip_dims else out
            outputs.append(out.transpose(-1, -2) if transpose else out)
    return torch.stack(outputs).mean(dim=0)


class Tile(NamedTuple):
    """One tile of a (B,C,H,W) map. ``box`` = (top, bottom, left, right) is the tile itself,
    ``window`` the same with up to ``halo`` pixels of context on every side (clipped at the
    image border), both in image coordinates; ``crop`` is ``x`` inside ``window``."""
    crop: torch.Tensor
    box: Tuple[int, int, int, int]
    window: Tuple[int, int, int, int]

    def of(self, other: torch.Tensor) -> torch.Tensor:
        """The same window of another map of the same height and width."""
        y0, y1, x0, x1 = self.window
        return other[..., y0:y1, x0:x1]


def iter_tiles(x: torch.Tensor, tile: int, halo: int) -> Iterator[Tile]:
    """``tile`` x ``tile`` tiles of x (B,C,H,W), row by row, covering it exactly once."""
    if tile <= 0 or halo < 0:
        raise ValueError(f"tile must be > 0 and halo/overlap >= 0, got tile={tile}, halo={halo}")
    h, w = x.shape[-2:]
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            y1, x1 = min(top + tile + halo, h), min(left + tile + halo, w)
            yield Tile(x[..., y0:y1, x0:x1], (top, min(top + tile, h), left, min(left + tile, w)),
                       (y0, y1, x0, x1))


def tile_centre(y: torch.Tensor, t: Tile, scale: int = 1) -> torch.Tensor:
    """The part of ``y`` = f(t.crop) (scaled ``scale`` x) that belongs to the tile itself."""
    top, bottom, left, right = t.box
    dy, dx = top - t.window[0], left - t.window[2]
    return y[..., dy * scale:(dy + bottom - top) * scale, dx * scale:(dx + right - left) * scale]


def tiled_apply(fn: Callable[..., torch.Tensor], x: torch.Tensor, *others: torch.Tensor,
                tile: int, halo: int, scale: int = 1) -> torch.Tensor:
    """``fn(x, *others)`` assembled tile by tile: maps (B,C,H,W) of equal H, W -> (B,C',s*H,s*W)
    for an ``fn`` that maps (h,w) crops to an (s*h, s*w) result. Exact when every output pixel
    of ``fn`` depends only on inputs within ``halo`` pixels and ``fn`` pads the border like the
    untiled call (zero padding does: tiles at the border are clipped, not padded). Peak memory
    follows ``(tile + 2 * halo)^2`` plus the output."""
    out = None
    for t in iter_tiles(x, tile, halo):
        y = fn(t.crop, *(t.of(o) for o in others))
        if out is None:
            out = y.new_empty(*y.shape[:-2], x.shape[-2] * scale, x.shape[-1] * scale)
        top, bottom, left, right = t.box
        out[..., top * scale:bottom * scale, left * scale:right * scale] = tile_centre(y, t, scale)
    return out


def tiled_super_resolve(model: nn.Module, lr: torch.Tensor, embedding: torch.Tensor, *,
                        tile: int, overlap: int) -> torch.Tensor:
    """Run only the SR network tile by tile with a fixed embedding; LR (B,3,h,w) -> SR.

    Each ``tile`` x ``tile`` LR tile is processed with ``overlap`` pixels of context on every side
    (clipped at the image border) and only its centre is kept, so a network whose receptive
    field is within ``overlap`` gives exactly the untiled result. Peak memory grows with
    ``(tile + 2 * overlap)^2`` instead of the image size.
    """
    return tiled_apply(lambda crop: model.super_resolve(crop, embedding), lr, tile=tile,
                       halo=overlap, scale=model.scale)


@contextmanager
def full_float32() -> Iterator[None]:
    """CUDA convolutions and matrix products in true float32 inside, restored after.

    PyTorch lets cuDNN use TF32 (10-bit mantissa) by default on Ampere and newer GPUs: on an H100
    that moves CDSR/DASR outputs by 5e-4 to 1.3e-3 of their range, 25-60 times the tolerance of
    the authors' golden outputs, and breaks tiled == untiled. Training may keep TF32 for speed;
    inference is exact. No effect on the CPU.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def centre_crops(lr: torch.Tensor, hr: Optional[torch.Tensor], size: Optional[int],
                 scale: int) -> Tuple[torch.Tensor, ...]:
    """The centred ``size`` LR crop (``centre_box``) and, when ``hr`` is given, the HR window
    it was made from (``scale`` x its box)."""
    top, left, h, w = centre_box(*lr.shape[-2:], size)
    crop = lr[..., top:top + h, left:left + w]
    if hr is None:
        return (crop,)
    return crop, hr[..., top * scale:(top + h) * scale, left * scale:(left + w) * scale]


def predict(model: nn.Module, lr: torch.Tensor, *, hr: Optional[torch.Tensor] = None,
            ensemble: bool = False, tile: Optional[int] = None, overlap: int = 32,
            embed_crop: Optional[int] = None, global_stats: bool = False,
            bf16: bool = False) -> torch.Tensor:
    """SR of ``lr`` (B,3,h,w) in 0..255 under the chosen policies (model in eval mode).

    tile: LR tile side; None runs the whole model at once (the authors' eval forward). When the
    image is larger than one tile, the embedding is estimated once, on the whole image or on its
    centred ``embed_crop`` square, and only the SR network runs per tile with ``overlap`` pixels
    of context. global_stats: models whose SR network pools over the whole image (CDSR's DQA)
    keep the whole-image statistics (``model.super_resolve_tiled``); models without such pooling
    (DASR) are already exact with enough overlap. ensemble: the x8 self-ensemble wraps whichever
    forward is used. Runs without autograd (``torch.inference_mode``: nothing of a tile outlives
    it, so tiling bounds memory), in true float32 on CUDA (``full_float32``) or in the model's
    dtype (a float64 model on a float64 input is a float64 reference run), or with ``bf16``
    under bfloat16 autocast (faster, less memory; not for scoring: see README, "Own images").
    hr (B,3,s*h,s*w) 0..255: the HR a model with ``needs_hr`` reads (KDSR's teacher; its
    embedding then comes from the LR and HR crops of the same window). Returns ``lr``'s dtype
    (float32 under ``bf16``).
    """
    if getattr(model, "needs_hr", False) and hr is None:
        raise ValueError(f"{model.name.upper()} reads the HR image beside the LR (a distillation "
                         "teacher): it scores benchmark sets, not LR images alone")

    def forward(x: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        if tile is None or max(x.shape[-2:]) <= tile:
            return model(x, *y)
        embedding = model.embed(*centre_crops(x, y[0] if y else None, embed_crop, model.scale))
        if global_stats and hasattr(model, "super_resolve_tiled"):
            return model.super_resolve_tiled(x, embedding, tile=tile)
        return tiled_super_resolve(model, x, embedding, tile=tile, overlap=overlap)

    arithmetic = (torch.autocast(lr.device.type, dtype=torch.bfloat16) if bf16
                  else full_float32())
    inputs = (lr,) if hr is None or not getattr(model, "needs_hr", False) else (lr, hr)
    with torch.inference_mode(), arithmetic:
        sr = self_ensemble(forward, *inputs) if ensemble else forward(*inputs)
    return sr.float() if bf16 else sr.to(lr.dtype)


def describe_policy(policy: dict) -> str:
    """One sentence for ``predict``'s keyword arguments ``policy`` (as in result tables)."""
    parts = []
    if policy.get("tile"):
        pooling = "whole-image DQA means" if policy.get("global_stats") else "per-tile DQA means"
        parts.append(f"tiles of {policy['tile']} LR px, overlap {policy.get('overlap', 32)}, embedding "
                     f"from the centred {policy.get('embed_crop') or 'whole'} crop, {pooling}")
    if policy.get("ensemble"):
        parts.append("x8 self-ensemble")
    return "; ".join(parts) or "whole image at once (the authors' eval forward)"


Item, Result = TypeVar("Item"), TypeVar("Result")


class DevicePool:
    """A model on several devices for inference, one image per device at a time.

    ``map(fn, items)`` yields ``fn(model, device, item)`` for every item, in item order, with
    the items spread over the devices as they become free: each device has its own copy of the
    model, used by one thread at a time (CUDA kernels run concurrently, Python waits in turns).
    With one device it is a plain loop over the model itself.
    """

    def __init__(self, model: nn.Module, devices: Sequence[torch.device]) -> None:
        if not devices:
            raise ValueError("DevicePool needs at least one device")
        self.devices = list(devices)
        self.models = [model] if len(devices) == 1 else [copy.deepcopy(model).to(d) for d in devices]

    def map(self, fn: Callable[[nn.Module, torch.device, Item], Result],
            items: Iterable[Item]) -> Iterator[Result]:
        if len(self.devices) == 1:
            yield from (fn(self.models[0], self.devices[0], item) for item in items)
            return
        free: "queue.Queue[int]" = queue.Queue()
        for index in range(len(self.devices)):
            free.put(index)

        def run(item: Item) -> Result:
            index = free.get()
            try:
                return fn(self.models[index], self.devices[index], item)
            finally:
                free.put(index)

        with ThreadPoolExecutor(len(self.devices)) as pool:
            pending: deque = deque()
            for item in items:               # at most two items per device in flight
                pending.append(pool.submit(run, item))
                if len(pending) >= 2 * len(self.devices):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
