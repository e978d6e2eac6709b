"""CDSR's degradation encoder: the LPE (pixel-wise + patch-wise branches) and the CSC codebook.

Inputs are RGB batches (B,3,H,W) in [0,1] (CDSR divides by 255 before the encoder). Channel
widths are embed_dim/4, embed_dim/2 and embed_dim (64, 128, 256 in the paper).
"""
import torch
from torch import nn

from .blocks import MLP, ConvBNAct

PATCH_SIZE = 12  # the patch branch turns each non-overlapping 12x12 patch into one token


def _widths(embed_dim: int) -> tuple[int, int, int]:
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    return embed_dim // 4, embed_dim // 2, embed_dim


class PixelBranch(nn.Module):
    """Pixel-wise branch: six ConvBNAct layers (k7, k1, k3/s2, k1, k7, k1), then global mean.

    (B,3,H,W) -> (B,embed_dim).
    """

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        c1, c2, c3 = _widths(embed_dim)
        self.layers = nn.Sequential(
            ConvBNAct(3, c1, 7), ConvBNAct(c1, c1, 1),
            ConvBNAct(c1, c2, 3, stride=2), ConvBNAct(c2, c2, 1),
            ConvBNAct(c2, c3, 7), ConvBNAct(c3, c3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).mean(dim=(2, 3))                           # (B,embed_dim)


class PatchBranch(nn.Module):
    """Patch-wise branch: a 12x12/stride-12 ConvBNAct (one token per patch), three 3x3 ones,
    then global mean. (B,3,H,W) -> (B,embed_dim); needs H, W >= 12 and ignores the bottom/right
    remainder when H or W is not a multiple of 12.
    """

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        c1, c2, c3 = _widths(embed_dim)
        self.layers = nn.Sequential(
            ConvBNAct(3, c1, PATCH_SIZE, stride=PATCH_SIZE, padding=0),
            ConvBNAct(c1, c1, 3), ConvBNAct(c1, c2, 3), ConvBNAct(c2, c3, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < PATCH_SIZE or w < PATCH_SIZE:
            raise ValueError(f"CDSR's patch-wise encoder branch needs H and W >= {PATCH_SIZE}, "
                             f"got a {h}x{w} input")
        return self.layers(x).mean(dim=(2, 3))                           # (B,embed_dim)


class DegradationCodebook(nn.Module):
    """CSC: re-express a feature as an attention-weighted mix of learned codebook entries.

    f (B,D) -> (B,D): scores = query_proj(f) @ key_proj(entries)^T (no temperature, no 1/sqrt(D)),
    softmax over the ``size`` entries, then the weighted sum of the raw entries.
    """

    def __init__(self, dim: int = 256, size: int = 1024):
        super().__init__()
        self.entries = nn.Parameter(torch.randn(size, dim))
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        query = self.query_proj(features)                                # (B,D)
        keys = self.key_proj(self.entries)                               # (N,D)
        weights = torch.softmax(query @ keys.T, dim=1)                   # (B,N)
        return weights @ self.entries                                    # (B,D)


class LPEEncoder(nn.Module):
    """CDSR's encoder: (B,3,H,W) in [0,1] -> (embedding (B,D), projection (B,D)).

    embedding = codebook(fusion(cat[pixel_branch(x), patch_branch(x)])), fed to the generator;
    projection = head(embedding), the contrastive head (MoCo L2-normalises it).
    """

    def __init__(self, embed_dim: int = 256, codebook_size: int = 1024):
        super().__init__()
        self.pixel_branch = PixelBranch(embed_dim)
        self.patch_branch = PatchBranch(embed_dim)
        self.fusion = MLP(2 * embed_dim, embed_dim, embed_dim)
        self.codebook = DegradationCodebook(embed_dim, codebook_size)
        self.head = MLP(embed_dim, embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([self.pixel_branch(x), self.patch_branch(x)], dim=1)  # (B,2D)
        embedding = self.codebook(self.fusion(features))                 # (B,D)
        return embedding, self.head(embedding)
