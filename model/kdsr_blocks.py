"""KDSR's two networks: the degradation encoder (KD-IDE) and the IDR-DCRB generator.

Both work on [0,1] images (the authors' ``rgb_range 1``). C is ``n_feats``; the encoder's pooled
features are 4C wide and its embedding C wide (64 for KDSR-M, 128 for KDSR-L).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LEAKY_SLOPE, MLP, UpsampleStage, conv3x3, upsample_factors
from .dasr import DIV2K_RGB_MEAN


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE, inplace=True)


class ResidualBlock(nn.Module):
    """EDSR residual block without scaling: conv1 -> LeakyReLU(0.1) -> conv2, plus x.
    (B,C,H,W) -> (B,C,H,W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(_lrelu(self.conv1(x))) + x


class KDSREncoder(nn.Module):
    """Implicit degradation estimator: x (B,in_channels,H,W) in [0,1] ->
    (embedding (B,C), kd_features (B,4C)).

    ``first_conv`` (in -> C) + LeakyReLU(0.1); ``n_resblocks`` residual blocks; ``widen``: three
    3x3 convs C -> 2C -> 2C -> 4C, each + LeakyReLU; global mean over H, W; ``feature_mlp``
    (Linear 4C->4C, LeakyReLU, Linear 4C->4C) + LeakyReLU gives ``kd_features``, the vector the
    distillation loss compares; ``degradation_proj`` (Linear 4C->C) + LeakyReLU gives the
    embedding that conditions the generator. Any H, W >= 1.

    The student reads the LR (in_channels 3); the teacher reads the LR beside the
    pixel-unshuffled HR (in_channels 3 + 3 s^2).
    """

    def __init__(self, in_channels: int = 3, n_feats: int = 64, n_resblocks: int = 9):
        super().__init__()
        c = n_feats
        self.first_conv = conv3x3(in_channels, c)
        self.res_blocks = nn.ModuleList(ResidualBlock(c) for _ in range(n_resblocks))
        self.widen = nn.ModuleList([conv3x3(c, 2 * c), conv3x3(2 * c, 2 * c),
                                    conv3x3(2 * c, 4 * c)])
        self.feature_mlp = MLP(4 * c, 4 * c, 4 * c)
        self.degradation_proj = nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _lrelu(self.first_conv(x))                                   # (B,C,H,W)
        for block in self.res_blocks:
            x = block(x)
        for conv in self.widen:
            x = _lrelu(conv(x))                                          # (B,4C,H,W) at the end
        kd_features = _lrelu(self.feature_mlp(x.mean(dim=(2, 3))))       # (B,4C)
        embedding = F.leaky_relu(self.degradation_proj(kd_features), LEAKY_SLOPE)  # (B,C)
        return embedding, kd_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B,in_channels,H,W) -> (B,C): the embedding alone."""
        return self(x)[0]


class PerSampleDepthwiseConv(nn.Module):
    """Depthwise k x k conv whose kernels are predicted per sample from a vector, then
    LeakyReLU(0.1).

    ``kernel_mlp`` (bias-free Linear C->C, LeakyReLU(0.1), Linear C->C*k*k) maps v (B,C) to C
    kernels per sample (channel c takes elements [c*k*k, (c+1)*k*k), row-major); they filter
    x (B,C,H,W) with padding k//2 and no bias. (B,C,H,W), (B,C) -> (B,C,H,W).
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_mlp = MLP(channels, channels, channels * kernel_size ** 2, bias=False)

    def forward(self, x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        kernels = self.kernel_mlp(vector).view(b * c, 1, k, k)           # (B*C,1,k,k)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, padding=k // 2, groups=b * c)
        # In place on the conv output itself, not on a view of it (see DynamicDepthwiseConv).
        return _lrelu(out).view(b, c, h, w)


class DynamicConvBlock(nn.Module):
    """The authors' IDR-DCRB: per-sample depthwise conv + LeakyReLU(0.1) -> 3x3 conv, plus x.
    x (B,C,H,W), degradation (B,C) -> (B,C,H,W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.dynamic_conv = PerSampleDepthwiseConv(channels)
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dynamic_conv(x, degradation)) + x


class KDSRGenerator(nn.Module):
    """x (B,3,h,w) in [0,1], embedding (B,C) -> SR (B,3,s*h,s*w) in [0,1] units (unclamped).

    Subtract the DIV2K mean; ``head_conv`` (3 -> C); ``n_blocks`` DynamicConvBlocks (the
    authors' DAG), all conditioned on the same embedding; ``body_conv`` and a long skip from
    the head; EDSR upsampler stages; ``tail_conv`` (C -> 3); add the mean back. Scale 3 or a
    power of two. Local (no pooling): any h, w >= 1, and tiling with enough overlap is exact.
    """

    def __init__(self, scale: int = 4, n_feats: int = 64, n_blocks: int = 53):
        super().__init__()
        mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("rgb_mean", mean, persistent=False)
        self.head_conv = conv3x3(3, n_feats)
        self.blocks = nn.ModuleList(DynamicConvBlock(n_feats) for _ in range(n_blocks))
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = nn.Sequential(*(UpsampleStage(n_feats, f)
                                         for f in upsample_factors(scale)))
        self.tail_conv = conv3x3(n_feats, 3)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        features = self.head_conv(x - self.rgb_mean)                     # (B,C,h,w)
        body = features
        for block in self.blocks:
            body = block(body, embedding)
        features = self.body_conv(body) + features
        sr = self.tail_conv(self.upsampler(features))                    # (B,3,s*h,s*w)
        return sr + self.rgb_mean
