"""CDSR (Zhou et al., ACM MM 2022): LPE/CSC encoder + DQA-fused RRDB-SFT generator.

The networks work on [0,1] images: ``CDSR`` divides its 0..255 input by 255 and multiplies the
generator's output by 255 (not clamped).
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MLP, ChannelGate, DegradationAwareBlock, DynamicDepthwiseConv, conv3x3
from .lpe import PATCH_SIZE, LPEEncoder
from .moco import BlindSRModel, MoCo

DENSE_SLOPE = 0.2      # LeakyReLU slope inside the residual dense blocks
RESIDUAL_SCALE = 0.2   # ESRGAN-style residual scaling of dense blocks and RRDB blocks


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
        kernel_embedding = self.attention(x.mean(dim=(2, 3)), degradation)   # (B,C)
        return self.dynamic_conv(x, kernel_embedding) + self.channel_gate(x, degradation)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs (growth ``growth``), LeakyReLU(0.2) after the first
    four; returns x + 0.2 * conv5(...). (B,C,H,W) -> (B,C,H,W).
    """

    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(channels + i * growth, growth) for i in range(4))
        self.convs.append(conv3x3(channels + 4 * growth, channels))
        for conv in self.convs:  # small residual branches at start, as in ESRGAN
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), DENSE_SLOPE))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, dim=1))


class LinearPReLU(nn.Module):
    """Linear(D, D) followed by a one-parameter PReLU: (B,D) -> (B,D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class PixelShuffleHead(nn.Module):
    """A single 3x3 conv to 3*s^2 channels, then PixelShuffle(s): (B,C,h,w) -> (B,3,s*h,s*w)."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.conv = conv3x3(channels, 3 * scale ** 2)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class RRDBSFTBlock(nn.Module):
    """One trunk block: x (B,C,H,W), degradation map (B,D) -> (B,C,H,W).

    ``condition`` turns the degradation map into a per-channel vector in (0,1) (B,C);
    ``dqa_block`` fuses it into the features; three dense blocks follow; the result is scaled
    by 0.2 and added to x.
    """

    def __init__(self, channels: int = 64, growth: int = 32, embed_dim: int = 256):
        super().__init__()
        self.condition = MLP(embed_dim, embed_dim, channels, activation=nn.PReLU())
        self.dqa_block = DegradationAwareBlock(channels, partial(DQA, channels))
        self.dense_blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor, degradation_map: torch.Tensor) -> torch.Tensor:
        vector = torch.sigmoid(self.condition(degradation_map))          # (B,C)
        out = self.dense_blocks(self.dqa_block(x, vector))               # (B,C,H,W)
        return x + RESIDUAL_SCALE * out


class CDSRGenerator(nn.Module):
    """RRDB-SFT generator: x (B,3,h,w) in [0,1], embedding (B,D) -> (B,3,s*h,s*w) (unclamped).

    embedding_mlp (4 x Linear+PReLU) -> degradation map; first_conv; ``n_blocks`` RRDBSFTBlocks;
    body_conv + long skip; a single conv to 3*s^2 channels and PixelShuffle(s).
    """

    def __init__(self, scale: int = 4, n_feats: int = 64, n_blocks: int = 10, growth: int = 32,
                 embed_dim: int = 256):
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.embedding_mlp = nn.Sequential(*(LinearPReLU(embed_dim) for _ in range(4)))
        self.first_conv = conv3x3(3, n_feats)
        self.blocks = nn.ModuleList(RRDBSFTBlock(n_feats, growth, embed_dim)
                                    for _ in range(n_blocks))
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = PixelShuffleHead(n_feats, scale)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        degradation_map = self.embedding_mlp(embedding)                  # (B,D)
        features = self.first_conv(x)                                    # (B,C,h,w)
        body = features
        for block in self.blocks:
            body = block(body, degradation_map)
        features = features + self.body_conv(body)
        return self.upsampler(features)                                  # (B,3,s*h,s*w)


class CDSR(BlindSRModel):
    """CDSR: MoCo(LPE encoder + CSC codebook) and the DQA-fused RRDB-SFT generator.

    Takes LR (B,3,h,w) in 0..255 with h, w >= 12 (the patch branch's patch size) and returns SR
    (B,3,s*h,s*w) in 0..255 units, not clamped. Defaults are the paper's.
    """

    name = "cdsr"
    min_input_size = PATCH_SIZE
    min_input_reason = f" (the encoder's patch-wise branch reads {PATCH_SIZE}x{PATCH_SIZE} patches)"

    def __init__(self, scale: int = 4, n_feats: int = 64, n_blocks: int = 10, growth: int = 32,
                 embed_dim: int = 256, codebook_size: int = 1024, queue_size: int = 8192,
                 momentum: float = 0.999, temperature: float = 0.07):
        encoder = MoCo(partial(LPEEncoder, embed_dim=embed_dim, codebook_size=codebook_size),
                       dim=embed_dim, queue_size=queue_size, momentum=momentum,
                       temperature=temperature)
        generator = CDSRGenerator(scale=scale, n_feats=n_feats, n_blocks=n_blocks, growth=growth,
                                  embed_dim=embed_dim)
        super().__init__(scale=scale, encoder=encoder, generator=generator)

    def to_network_range(self, lr: torch.Tensor) -> torch.Tensor:
        return lr / 255.0

    def from_network_range(self, sr: torch.Tensor) -> torch.Tensor:
        return sr * 255.0
