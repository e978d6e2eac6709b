"""Crops of validation images to look at while a run trains (TensorBoard's crops/ images)."""
from typing import List

import torch
from torch import nn

from data.eval_set import EvalSet
from data.images import centre_box, to_image, to_tensor
from data.tensorboard_log import Crop

from .inference import predict


def validation_crops(model: nn.Module, test_set: EvalSet, device: torch.device, *, count: int = 3,
                     lr_size: int = 48, **policy) -> List[Crop]:
    """(image name, LR, SR, HR) of the first ``count`` images of ``test_set``: the model's SR of
    the whole LR image under the inference ``policy`` (``model.inference.predict``'s keywords),
    then the same centred window of the three, ``lr_size`` LR pixels a side (clipped to the
    image) and ``scale`` times that for SR and HR; uint8 (h,w,3) and (s*h,s*w,3) RGB. A model
    that reads the HR (``needs_hr``: KDSR's teacher) is fed it, as validation feeds it."""
    needs_hr = getattr(model, "needs_hr", False)
    was_training = model.training
    model.eval()
    crops = []
    for index in range(min(count, len(test_set))):
        name, lr, hr = test_set.pair(index)
        fed_hr = to_tensor(hr)[None].to(device) if needs_hr else None
        sr = to_image(predict(model, to_tensor(lr)[None].to(device), hr=fed_hr, **policy))
        top, left, h, w = centre_box(*lr.shape[:2], min(lr_size, *lr.shape[:2]))
        s = model.scale
        crops.append((name, lr[top:top + h, left:left + w],
                      sr[s * top:s * (top + h), s * left:s * (left + w)],
                      hr[s * top:s * (top + h), s * left:s * (left + w)]))
    model.train(was_training)
    return crops
