"""CDSR's fusion layers: DQA (domain query attention) and the ``cdsr-no-dqa`` DA conv.

A fusion layer conditions a feature map x (B,C,H,W) on the degradation vector (B,C); ``FUSIONS``
registers them by name for the generator's trunk (``fusion='dqa'``, the paper's, or ``'da'``).
Each is called as ``layer(x, degradation)`` and ``layer.forward_with_mean(x, degradation,
image_mean)`` (the latter for tiled inference, with the whole image's mean).
"""
from typing import Callable

import torch
from torch import nn

from .blocks import ChannelGate, DynamicDepthwiseConv
from .dasr import DAConv


class CrossModalAttention(nn.Module):
    """Mixes the degradation vector with the image statistics (DQA's attention).

    image_stats (B,C), degradation (B,C) -> (B,C):
    attn[b,i,j] = softmax_j(query(f)_i * key(d)_j); out_i = sum_j attn[i,j] value(d)_j;
    returns gamma * out + d, with the learnable scalar gamma starting at 0.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)

    def forward(self, image_stats: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        q = self.query(image_stats)                                      # (B,C)
        k = self.key(degradation)                                        # (B,C)
        v = self.value(degradation)                                      # (B,C)
        attn = torch.softmax(q.unsqueeze(2) * k.unsqueeze(1), dim=-1)    # (B,C,C)
        out = torch.bmm(attn, v.unsqueeze(2)).squeeze(2)                 # (B,C)
        return self.gamma * out + degradation


class DQA(nn.Module):
    """Degradation-query attention conv: x (B,C,H,W), degradation (B,C) -> (B,C,H,W).

    The attention mixes the degradation vector with x's spatial mean; the result predicts a
    per-sample depthwise kernel (``dynamic_conv``); the raw degradation vector drives a channel
    gate on x. Output = dynamic_conv + channel_gate.
    """

    def __init__(self, channels: int = 64, kernel_size: int = 3, reduction: int = 2):
        super().__init__()
        self.attention = CrossModalAttention(channels)
        self.dynamic_conv = DynamicDepthwiseConv(channels, kernel_size)
        self.channel_gate = ChannelGate(channels, reduction)

    def forward(self, x: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mean(x, degradation, x.mean(dim=(2, 3)))

    def forward_with_mean(self, x: torch.Tensor, degradation: torch.Tensor,
                          image_mean: torch.Tensor) -> torch.Tensor:
        """DQA with the spatial mean (B,C) given, e.g. the whole image's when x is a tile."""
        kernel_embedding = self.attention(image_mean, degradation)           # (B,C)
        return self.dynamic_conv(x, kernel_embedding) + self.channel_gate(x, degradation)

    @property
    def radius(self) -> int:
        """Context (pixels) an output pixel reads on each side once the mean is fixed."""
        return self.dynamic_conv.kernel_size // 2


class DAFusion(DAConv):
    """The ``cdsr-no-dqa`` ablation's fusion layer: DQA without its attention.

    x (B,C,H,W), degradation (B,C) -> (B,C,H,W): the degradation vector itself predicts the
    per-sample depthwise kernel (DASR's DA conv), with DQA's channel-gate reduction (2) so that
    only the attention with the image statistics is removed. Called like ``DQA``.
    """

    def __init__(self, channels: int = 64, kernel_size: int = 3, reduction: int = 2):
        super().__init__(channels, kernel_size, reduction)

    def forward_with_mean(self, x: torch.Tensor, degradation: torch.Tensor,
                          image_mean: torch.Tensor) -> torch.Tensor:
        """Same as ``forward``: a DA conv reads no image statistics (the mean is ignored)."""
        return self.forward(x, degradation)

    @property
    def radius(self) -> int:
        """Context (pixels) an output pixel reads on each side."""
        return self.dynamic_conv.kernel_size // 2


# Fusion layers of the trunk: name -> constructor(channels) of a module called as
# ``layer(x, degradation)`` and ``layer.forward_with_mean(x, degradation, image_mean)``.
FUSIONS: dict[str, Callable[[int], nn.Module]] = {"dqa": DQA, "da": DAFusion}


def fusion_layer(fusion: str) -> Callable[[int], nn.Module]:
    """The fusion constructor registered as ``fusion``; ValueError listing the valid names."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of: {', '.join(sorted(FUSIONS))}")
    return FUSIONS[fusion]
