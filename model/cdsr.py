"""CDSR (Zhou et al., ACM MM 2022): LPE/CSC encoder + DQA-fused RRDB-SFT generator.

The networks work on [0,1] images: ``CDSR`` divides its 0..255 input by 255 and multiplies the
generator's output by 255 (not clamped). Its switches build the ablations of
``model/variants.py`` (``cdsr-no-patch`` and so on); the defaults are the paper's network.
"""
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LEAKY_SLOPE, MLP, DegradationAwareBlock, check_image_batch, conv3x3
from .dasr import DASREncoder
from .dqa import fusion_layer
from .inference import iter_tiles, tile_centre, tiled_apply
from .lpe import PATCH_SIZE, LPEEncoder
from .base import ContrastiveBlindSRModel
from .moco import MoCo
from .variants import variant_name

DENSE_SLOPE = 0.2      # LeakyReLU slope inside the residual dense blocks
RESIDUAL_SCALE = 0.2   # ESRGAN-style residual scaling of dense blocks and RRDB blocks


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
        if torch.is_grad_enabled():    # autograd keeps each conv's input: concatenate
            features = [x]
            for conv in self.convs[:-1]:   # the first conv reads x itself (a cat of one copies)
                inputs = torch.cat(features, dim=1) if len(features) > 1 else x
                features.append(F.leaky_relu(conv(inputs), DENSE_SLOPE, inplace=True))
            return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, dim=1))
        # Inference: the features grow in one (B,C+4G,H,W) buffer, each conv reading its
        # leading channels; one allocation instead of four concatenations, a third of the copying.
        channels, growth = x.shape[1], self.convs[0].out_channels
        features = x.new_empty(x.shape[0], channels + 4 * growth, *x.shape[2:])
        features[:, :channels] = x
        for conv in self.convs[:-1]:
            out = conv(features[:, :channels])
            features[:, channels:channels + growth] = F.leaky_relu(out, DENSE_SLOPE, inplace=True)
            channels += growth
        return x + RESIDUAL_SCALE * self.convs[-1](features)


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
    ``dqa_block`` fuses it into the features (with DQA layers, or ``fusion='da'``: DA convs);
    three dense blocks follow; the result is scaled by 0.2 and added to x.
    """

    def __init__(self, channels: int = 64, growth: int = 32, embed_dim: int = 256,
                 fusion: str = "dqa"):
        super().__init__()
        self.condition = MLP(embed_dim, embed_dim, channels, activation=nn.PReLU())
        self.dqa_block = DegradationAwareBlock(channels, partial(fusion_layer(fusion), channels))
        self.dense_blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor, degradation_map: torch.Tensor) -> torch.Tensor:
        vector = torch.sigmoid(self.condition(degradation_map))          # (B,C)
        out = self.dense_blocks(self.dqa_block(x, vector))               # (B,C,H,W)
        return x + RESIDUAL_SCALE * out

    def forward_tiled(self, x: torch.Tensor, degradation_map: torch.Tensor, *,
                      tile: int) -> torch.Tensor:
        """``forward`` computed tile by tile with each DQA's whole-image mean (two passes).

        The first DQA's mean is x's. Pass 1 runs the block up to the second DQA on every tile
        and sums the tile centres, giving that DQA's whole-image mean; pass 2 runs the whole
        block per tile with both means. Tiles carry exactly the context the convolutions need,
        so the result equals ``forward`` up to float rounding. x (B,C,H,W) -> (B,C,H,W).
        """
        vector = torch.sigmoid(self.condition(degradation_map))          # (B,C)
        dab = self.dqa_block
        first_mean = x.mean(dim=(2, 3))                                  # (B,C)

        def first_half(crop: torch.Tensor) -> torch.Tensor:             # DQA1, conv1
            out = F.leaky_relu(dab.adapt1.forward_with_mean(crop, vector, first_mean), LEAKY_SLOPE)
            return F.leaky_relu(dab.conv1(out), LEAKY_SLOPE)

        first_radius = dab.adapt1.radius + _conv_radius(dab.conv1)
        total = x.new_zeros(x.shape[:2])
        for t in iter_tiles(x, tile, first_radius):
            total += tile_centre(first_half(t.crop), t).sum(dim=(2, 3))
        second_mean = total / (x.shape[-2] * x.shape[-1])                 # (B,C)

        def whole_block(crop: torch.Tensor) -> torch.Tensor:
            out = F.leaky_relu(dab.adapt2.forward_with_mean(first_half(crop), vector, second_mean),
                               LEAKY_SLOPE)
            out = dab.conv2(out) + crop
            return crop + RESIDUAL_SCALE * self.dense_blocks(out)

        radius = (first_radius + dab.adapt2.radius + _conv_radius(dab.conv2)
                  + sum(_conv_radius(m) for m in self.dense_blocks.modules() if isinstance(m, nn.Conv2d)))
        return tiled_apply(whole_block, x, tile=tile, halo=radius)


class CDSRGenerator(nn.Module):
    """RRDB-SFT generator: x (B,3,h,w) in [0,1], embedding (B,D) -> (B,3,s*h,s*w) (unclamped).

    embedding_mlp (4 x Linear+PReLU) -> degradation map; first_conv; ``n_blocks`` RRDBSFTBlocks
    (fusion layers: ``fusion``, see ``model/dqa.py``); body_conv + long skip; a single conv to 3*s^2
    channels and PixelShuffle(s).
    """

    def __init__(self, scale: int = 4, n_feats: int = 64, n_blocks: int = 10, growth: int = 32,
                 embed_dim: int = 256, fusion: str = "dqa"):
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.embedding_mlp = nn.Sequential(*(LinearPReLU(embed_dim) for _ in range(4)))
        self.first_conv = conv3x3(3, n_feats)
        self.blocks = nn.ModuleList(RRDBSFTBlock(n_feats, growth, embed_dim, fusion)
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

    def forward_tiled(self, x: torch.Tensor, embedding: torch.Tensor, *, tile: int) -> torch.Tensor:
        """``forward`` computed ``tile`` x ``tile`` pixels at a time, block by block, keeping every
        DQA's whole-image mean (``RRDBSFTBlock.forward_tiled``): equal to ``forward`` up to
        float rounding. Memory: three (B,C,h,w) feature maps (the long skip, a block's input and
        its output) plus one tile's activations, instead of all activations of the whole image.
        """
        degradation_map = self.embedding_mlp(embedding)                  # (B,D)
        features = tiled_apply(self.first_conv, x, tile=tile, halo=_conv_radius(self.first_conv))
        body = features
        for block in self.blocks:
            body = block.forward_tiled(body, degradation_map, tile=tile)

        def tail(skip: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
            return self.upsampler(skip + self.body_conv(trunk))

        halo = _conv_radius(self.body_conv) + _conv_radius(self.upsampler.conv)
        return tiled_apply(tail, features, body, tile=tile, halo=halo,
                           scale=self.upsampler.shuffle.upscale_factor)


def _conv_radius(conv: nn.Conv2d) -> int:
    """Context (pixels) a stride-1 'same' convolution reads on each side."""
    return conv.dilation[0] * (conv.kernel_size[0] // 2)


def encoder_factory(encoder: str, *, embed_dim: int, codebook_size: int, pixel_branch: bool,
                    patch_branch: bool, codebook: bool) -> Callable[[], nn.Module]:
    """What MoCo builds twice: 'lpe' (CDSR's encoder with the given branches and codebook) or
    'dasr' (DASR's six-conv encoder, which has neither: its switches must stay at True, True
    and False). ValueError for anything else."""
    if encoder == "lpe":
        return partial(LPEEncoder, embed_dim=embed_dim, codebook_size=codebook_size,
                       pixel_branch=pixel_branch, patch_branch=patch_branch, codebook=codebook)
    if encoder == "dasr":
        if not (pixel_branch and patch_branch) or codebook:
            raise ValueError("encoder='dasr' has no LPE branches and no CSC codebook: keep "
                             "pixel_branch=True, patch_branch=True and set codebook=False")
        return partial(DASREncoder, embed_dim=embed_dim)
    raise ValueError(f"unknown encoder {encoder!r}; choose one of: dasr, lpe")


class CDSR(ContrastiveBlindSRModel):
    """CDSR: MoCo(LPE encoder + CSC codebook) and the DQA-fused RRDB-SFT generator.

    Takes LR (B,3,h,w) in 0..255 with h, w >= 12 (the patch branch's patch size) and returns SR
    (B,3,s*h,s*w) in 0..255 units, not clamped. Defaults are the paper's.

    The keyword-only switches build the registered ablations (``model/variants.py``):
    ``pixel_branch``/``patch_branch``/``codebook`` switch off parts of the LPE encoder,
    ``fusion='da'`` replaces DQA by DA convs, ``encoder='dasr'`` uses DASR's encoder (in [0,1],
    like LPE). ``name`` is the variant's registry name; combinations that are not registered
    are refused. The encoder reads any h, w >= 1 without the patch branch.
    """

    name = "cdsr"
    min_input_size = PATCH_SIZE
    min_input_reason = f" (the encoder's patch-wise branch reads {PATCH_SIZE}x{PATCH_SIZE} patches)"

    def __init__(self, scale: int = 4, n_feats: int = 64, n_blocks: int = 10, growth: int = 32,
                 embed_dim: int = 256, codebook_size: int = 1024, queue_size: int = 8192,
                 momentum: float = 0.999, temperature: float = 0.07, *,
                 pixel_branch: bool = True, patch_branch: bool = True, codebook: bool = True,
                 fusion: str = "dqa", encoder: str = "lpe"):
        make_encoder = encoder_factory(encoder, embed_dim=embed_dim, codebook_size=codebook_size,
                                       pixel_branch=pixel_branch, patch_branch=patch_branch,
                                       codebook=codebook)
        fusion_layer(fusion)
        name = variant_name(dict(pixel_branch=pixel_branch, patch_branch=patch_branch,
                                 codebook=codebook, fusion=fusion, encoder=encoder))
        moco = MoCo(make_encoder, dim=embed_dim, queue_size=queue_size, momentum=momentum,
                    temperature=temperature)
        generator = CDSRGenerator(scale=scale, n_feats=n_feats, n_blocks=n_blocks, growth=growth,
                                  embed_dim=embed_dim, fusion=fusion)
        super().__init__(scale=scale, encoder=moco, generator=generator)
        self.name = name
        self.min_input_size, self.min_input_reason = self.input_requirement(encoder=encoder,
                                                                            patch_branch=patch_branch)

    @classmethod
    def input_requirement(cls, **switches) -> tuple[int, str]:
        if switches.get("encoder", "lpe") != "lpe" or not switches.get("patch_branch", True):
            return 1, ""                # no patch-wise branch: any size
        return cls.min_input_size, cls.min_input_reason

    def to_network_range(self, lr: torch.Tensor) -> torch.Tensor:
        return lr / 255.0

    def super_resolve_tiled(self, lr: torch.Tensor, embedding: torch.Tensor, *,
                            tile: int) -> torch.Tensor:
        """``super_resolve`` tile by tile with every DQA's whole-image mean kept (two passes per
        block, see ``CDSRGenerator.forward_tiled``): same result up to float rounding, memory
        three 64-channel LR-size maps plus one tile's work. lr (B,3,h,w) 0..255 -> SR."""
        check_image_batch(lr, "CDSR lr")
        if embedding.dim() != 2 or embedding.shape[0] != lr.shape[0]:
            raise ValueError(f"embedding must be (B,embed_dim) with B = {lr.shape[0]}, "
                             f"got {tuple(embedding.shape)}")
        sr = self.generator.forward_tiled(self.to_network_range(lr), embedding, tile=tile)
        return self.from_network_range(sr)

    def from_network_range(self, sr: torch.Tensor) -> torch.Tensor:
        return sr * 255.0
