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

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """f (B,D) -> (B,N) softmax weights over the entries (rows sum to 1)."""
        query = self.query_proj(features)                                # (B,D)
        keys = self.key_proj(self.entries)                               # (N,D)
        return torch.softmax(query @ keys.T, dim=1)                      # (B,N)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.attention(features) @ self.entries                   # (B,D)


class LPEEncoder(nn.Module):
    """CDSR's encoder: (B,3,H,W) in [0,1] -> (embedding (B,D), projection (B,D)).

    embedding = codebook(fusion(cat[pixel_branch(x), patch_branch(x)])), fed to the generator;
    projection = head(embedding), the contrastive head (MoCo L2-normalises it).

    Ablations (``model/variants.py``): ``pixel_branch``/``patch_branch`` False drops that branch
    (the fusion MLP then reads D features instead of 2D; at least one branch stays);
    ``codebook`` False makes the fused feature the embedding (no CSC). The paper's encoder has
    all three; its state-dict keys do not depend on the switches.
    """

    def __init__(self, embed_dim: int = 256, codebook_size: int = 1024, *,
                 pixel_branch: bool = True, patch_branch: bool = True, codebook: bool = True):
        super().__init__()
        if not (pixel_branch or patch_branch):
            raise ValueError("the LPE encoder needs its pixel-wise or its patch-wise branch")
        self.pixel_branch = PixelBranch(embed_dim) if pixel_branch else None
        self.patch_branch = PatchBranch(embed_dim) if patch_branch else None
        n_branches = int(pixel_branch) + int(patch_branch)
        self.fusion = MLP(n_branches * embed_dim, embed_dim, embed_dim)
        self.codebook = DegradationCodebook(embed_dim, codebook_size) if codebook else None
        self.head = MLP(embed_dim, embed_dim, embed_dim)

    def fused_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B,D): the branches' features fused, before the codebook."""
        branches = [b for b in (self.pixel_branch, self.patch_branch) if b is not None]
        return self.fusion(torch.cat([branch(x) for branch in branches], dim=1))  # (B,D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.fused_features(x)                               # (B,D)
        if self.codebook is not None:
            embedding = self.codebook(embedding)                         # (B,D)
        return embedding, self.head(embedding)
