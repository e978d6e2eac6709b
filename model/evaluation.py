"""The one evaluation loop: a model's PSNR/SSIM on evaluation sets, as training validation and
test.py compute them, and the inference policy the command line asks for.

``evaluate`` runs ``model.inference.predict`` on every LR image of every ``data.eval_set.EvalSet``
and scores it with ``data.metrics`` against the HR (Y channel, ``scale`` border pixels shaved),
beside MATLAB bicubic upscaling of the same LR when asked; scoring a checkpoint never needs the
training code.
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from data.eval_set import EvalSet
from data.images import to_image, write_png
from data.metrics import mean_score, psnr, ssim
from data.resize import bicubic_upscale

from .inference import DevicePool, predict


def inference_policy(args: argparse.Namespace) -> Dict[str, object]:
    """Keyword arguments of ``model.inference.predict`` from --self_ensemble, --chop, --tile,
    --tile_overlap, --embed_crop and --tile_pooling."""
    return {"ensemble": args.self_ensemble, "tile": args.tile if args.chop else None,
            "overlap": args.tile_overlap, "embed_crop": args.embed_crop or None,
            "global_stats": args.tile_pooling == "image"}


@torch.no_grad()
def evaluate(model: nn.Module, test_sets: Sequence[EvalSet], device: torch.device, *,
             with_bicubic: bool = False, save_dir: Optional[Path] = None,
             devices: Sequence[torch.device] = (), **policy) -> Dict[str, Dict[str, float]]:
    """PSNR/SSIM (Y, border = scale) of the model on each set: the only evaluation loop.

    ``test_sets``: ``data.eval_set.EvalSet``s (one dataset under one degradation setting) with
    unique names, whose items are ``{"name": str, "lr": float (3,h,w), "hr": float (3,s*h,s*w)}``
    in 0..255: training validation's fixed-degradation sets (named after their dataset), or
    test.py's, one per (dataset, protocol setting) named ``<dataset>/<setting>``. ``policy``:
    keyword arguments of ``model.inference.predict``
    (ensemble, tile, overlap, embed_crop, global_stats); none = the authors' eval forward.

    Returns ``{set name: {"psnr", "ssim"[, "bicubic_psnr", "bicubic_ssim"]}}`` (means over
    images). With ``save_dir``, SR images are written to ``save_dir/<set name>/<image>.png``.
    ``devices``: score on these devices, one image per device at a time (default: ``device``).
    """
    names = [test_set.name for test_set in test_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation sets need distinct names, got {names}")
    was_training = model.training
    model.eval()
    pool = DevicePool(model, devices or [device])
    results = {}
    for test_set in test_sets:
        def score(net: nn.Module, on: torch.device, index: int) -> Dict[str, float]:
            item = test_set[index]
            lr, hr = item["lr"][None].to(on), item["hr"][None]
            sr = predict(net, lr, **policy).cpu()
            outputs = {"": sr, "bicubic_": bicubic_upscale(lr, model.scale).cpu()} if with_bicubic else {"": sr}
            if save_dir is not None:
                write_png(Path(save_dir) / test_set.name / f"{item['name']}.png", to_image(sr))
            return {prefix + metric: fn(image, hr, crop_border=model.scale)
                    for prefix, image in outputs.items() for metric, fn in (("psnr", psnr), ("ssim", ssim))}

        scores: Dict[str, List[float]] = {}
        for image_scores in tqdm(pool.map(score, range(len(test_set))), total=len(test_set),
                                 desc=f"eval {test_set.name}", leave=False, disable=None):
            for key, value in image_scores.items():
                scores.setdefault(key, []).append(value)
        results[test_set.name] = {key: mean_score(values) for key, values in scores.items()}
    model.train(was_training)
    return results
