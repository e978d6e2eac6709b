"""Layers shared by the CDSR, DASR and KDSR networks.

Everything here works on float tensors of any dtype and device. Feature maps are (B,C,H,W);
degradation vectors are (B,C).
"""
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.1  # the LeakyReLU slope both papers use outside the dense blocks


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution, stride 1, padding 1 (keeps H and W)."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


def check_image_batch(x: torch.Tensor, what: str = "input", min_size: int = 1,
                      reason: str = "") -> None:
    """Raise ValueError unless ``x`` is a floating (B,3,H,W) batch with H, W >= ``min_size``
    (``reason`` explains the minimum in the message)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a (B,3,H,W) RGB batch, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}")
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{what} is {h}x{w} pixels but needs H and W >= {min_size}{reason}")


class ConvBNAct(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d (eps 1e-5) -> LeakyReLU(0.1).

    (B,in,H,W) -> (B,out,H',W') with the usual convolution arithmetic;
    ``padding`` defaults to ``kernel_size // 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on BatchNorm's fresh output (its backward needs the input, not the output).
        return F.leaky_relu(self.norm(self.conv(x)), LEAKY_SLOPE, inplace=True)


class MLP(nn.Module):
    """Linear -> activation -> Linear on (B, in_features) -> (B, out_features).

    ``activation`` defaults to LeakyReLU(0.1) (in place on fc1's output); pass ``nn.PReLU()``
    for a learnable slope.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *,
                 bias: bool = True, activation: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = activation if activation is not None else nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DynamicDepthwiseConv(nn.Module):
    """Depthwise conv whose kernels are predicted per sample from a vector, then a 1x1 conv.

    ``kernel_mlp`` maps the vector (B,C) to C kernels of k x k (channel c takes elements
    [c*k*k, (c+1)*k*k) in row-major order); they filter x (B,C,H,W) with padding k//2 and no
    bias, followed by LeakyReLU(0.1) and the 1x1 ``pointwise`` conv (with bias).
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_mlp = MLP(channels, channels, channels * kernel_size ** 2, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.kernel_size
        kernels = self.kernel_mlp(vector).view(b * c, 1, k, k)           # (B*C,1,k,k)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, padding=k // 2, groups=b * c)
        # In place on the conv output itself, not on a view of it: an in-place op on a view
        # makes autograd rebuild the whole base in backward (CopySlices: zeros + copy).
        out = F.leaky_relu(out, LEAKY_SLOPE, inplace=True)               # (1,B*C,H,W)
        return self.pointwise(out.view(b, c, h, w))


class ChannelGate(nn.Module):
    """Channel attention driven by a vector: x * sigmoid(expand(lrelu(reduce(v)))).

    x (B,C,H,W), vector (B,C) -> (B,C,H,W). ``reduce``/``expand`` are bias-free 1x1 convs
    C -> C//reduction -> C.
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        if channels % reduction:
            raise ValueError(f"channels ({channels}) must be divisible by reduction ({reduction})")
        self.reduce = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.expand = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        v = vector[:, :, None, None]                                     # (B,C,1,1)
        gate = torch.sigmoid(self.expand(F.leaky_relu(self.reduce(v), LEAKY_SLOPE, inplace=True)))
        return x * gate


class DegradationAwareBlock(nn.Module):
    """Residual block of two degradation-conditioned layers and two 3x3 convs.

    x (B,C,H,W), vector (B,C') -> (B,C,H,W):
    ``adapt1 -> lrelu -> conv1 -> lrelu -> adapt2 -> lrelu -> conv2``, plus x.
    ``make_adaptive()`` builds each conditioned layer, a module called as ``layer(x, vector)``
    (DASR's DA conv, CDSR's DQA). Both receive the same ``vector``.
    """

    def __init__(self, channels: int, make_adaptive: Callable[[], nn.Module]):
        super().__init__()
        self.adapt1 = make_adaptive()
        self.adapt2 = make_adaptive()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        # In place: each activation overwrites a fresh conv output nothing else keeps, so
        # backward stores one 64-channel map per activation instead of two.
        out = F.leaky_relu(self.adapt1(x, vector), LEAKY_SLOPE, inplace=True)
        out = F.leaky_relu(self.conv1(out), LEAKY_SLOPE, inplace=True)
        out = F.leaky_relu(self.adapt2(out, vector), LEAKY_SLOPE, inplace=True)
        return self.conv2(out) + x


class UpsampleStage(nn.Module):
    """3x3 conv to C*f^2 channels, then PixelShuffle(f): (B,C,h,w) -> (B,C,f*h,f*w)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.conv = conv3x3(channels, channels * factor ** 2)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def upsample_factors(scale: int) -> list[int]:
    """EDSR's upsampler plan: x2 stages for powers of two, one x3 stage for 3."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"the upsampler supports scale 3 or a power of two, got {scale}")
