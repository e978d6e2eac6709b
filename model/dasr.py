"""DASR (Wang et al., CVPR 2021): a 6-conv degradation encoder + the DA-conv generator.

Both networks read raw 0..255 pixels; the generator subtracts the DIV2K mean first and adds it
back at the end, so its output is in 0..255 units (not clamped).
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (LEAKY_SLOPE, MLP, ChannelGate, ConvBNAct, DegradationAwareBlock,
                     DynamicDepthwiseConv, UpsampleStage, conv3x3, upsample_factors)
from .base import ContrastiveBlindSRModel
from .moco import MoCo

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # in [0,1]; times 255 for 0..255 pixels


def div2k_mean_255() -> torch.Tensor:
    """(3,) float32 ``255 * DIV2K_RGB_MEAN``, computed in float64 and rounded once."""
    return (255.0 * torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float64)).float()


class DASREncoder(nn.Module):
    """(B,3,H,W) in 0..255 -> (embedding (B,D), projection (B,D)).

    Six 3x3 ConvBNAct layers (widths D/4, D/4, D/2 stride 2, D/2, D stride 2, D; 64..256 in the
    paper), global mean -> embedding; ``head`` MLP -> projection (contrastive only).
    """

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
        c1, c2, c3 = embed_dim // 4, embed_dim // 2, embed_dim
        self.layers = nn.Sequential(
            ConvBNAct(3, c1, 3), ConvBNAct(c1, c1, 3),
            ConvBNAct(c1, c2, 3, stride=2), ConvBNAct(c2, c2, 3),
            ConvBNAct(c2, c3, 3, stride=2), ConvBNAct(c3, c3, 3),
        )
        self.head = MLP(embed_dim, embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.layers(x).mean(dim=(2, 3))                      # (B,D)
        return embedding, self.head(embedding)


class DAConv(nn.Module):
    """Degradation-aware conv: x (B,C,H,W), degradation (B,C) -> (B,C,H,W).

    A per-sample depthwise kernel predicted from the degradation vector plus a channel gate
    driven by the same vector.
    """

    def __init__(self, channels: int = 64, kernel_size: int = 3, reduction: int = 8):
        super().__init__()
        self.dynamic_conv = DynamicDepthwiseConv(channels, kernel_size)
        self.channel_gate = ChannelGate(channels, reduction)

    def forward(self, x: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        return self.dynamic_conv(x, degradation) + self.channel_gate(x, degradation)


class DAGroup(nn.Module):
    """``n_blocks`` DA blocks and a 3x3 conv, plus the group input: (B,C,H,W) -> (B,C,H,W)."""

    def __init__(self, channels: int = 64, n_blocks: int = 5):
        super().__init__()
        self.blocks = nn.ModuleList(DegradationAwareBlock(channels, partial(DAConv, channels))
                                    for _ in range(n_blocks))
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        out = x
        for block in self.blocks:
            out = block(out, degradation)
        return self.conv(out) + x


class DASRGenerator(nn.Module):
    """DA-conv generator: x (B,3,h,w) in 0..255, embedding (B,D) -> (B,3,s*h,s*w) (unclamped).

    Subtract the mean; head_conv; ``degradation_proj`` (bias-free Linear + LeakyReLU(0.1)) maps
    the embedding to a C-d degradation vector; ``n_groups`` DAGroups, body_conv and a long skip;
    upsampler stages, tail_conv; add the mean back.
    """

    def __init__(self, scale: int = 4, n_feats: int = 64, n_groups: int = 5, n_blocks: int = 5,
                 embed_dim: int = 256):
        super().__init__()
        self.register_buffer("rgb_mean", div2k_mean_255().view(1, 3, 1, 1), persistent=False)
        self.head_conv = conv3x3(3, n_feats)
        self.degradation_proj = nn.Linear(embed_dim, n_feats, bias=False)
        self.groups = nn.ModuleList(DAGroup(n_feats, n_blocks) for _ in range(n_groups))
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = nn.Sequential(*(UpsampleStage(n_feats, f)
                                         for f in upsample_factors(scale)))
        self.tail_conv = conv3x3(n_feats, 3)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        degradation = F.leaky_relu(self.degradation_proj(embedding), LEAKY_SLOPE, inplace=True)
        features = self.head_conv(x - self.rgb_mean)                     # (B,C,h,w)
        body = features
        for group in self.groups:
            body = group(body, degradation)
        features = features + self.body_conv(body)
        sr = self.tail_conv(self.upsampler(features))                    # (B,3,s*h,s*w)
        return sr + self.rgb_mean


class DASR(ContrastiveBlindSRModel):
    """DASR: MoCo(6-conv encoder) and the DA-conv generator.

    Takes LR (B,3,h,w) in 0..255 (raw pixels for both networks) and returns SR (B,3,s*h,s*w)
    in 0..255 units, not clamped. Defaults are the paper's; scale must be 3 or a power of two.
    """

    name = "dasr"

    def __init__(self, scale: int = 4, n_feats: int = 64, n_groups: int = 5, n_blocks: int = 5,
                 embed_dim: int = 256, queue_size: int = 8192, momentum: float = 0.999,
                 temperature: float = 0.07):
        encoder = MoCo(partial(DASREncoder, embed_dim=embed_dim), dim=embed_dim,
                       queue_size=queue_size, momentum=momentum, temperature=temperature)
        generator = DASRGenerator(scale=scale, n_feats=n_feats, n_groups=n_groups,
                                  n_blocks=n_blocks, embed_dim=embed_dim)
        super().__init__(scale=scale, encoder=encoder, generator=generator)
