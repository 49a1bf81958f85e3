"""Vision Transformers (Dosovitskiy et al. 2021) for small images: plain nn.Modules, no Lightning.

Names follow timm (`patch_embed`, `pos_embed`, `cls_token`, `blocks`, `norm`, `head`): optimizers
route by them (Muon takes only the hidden weight matrices; embeddings, tokens and the head go to
its AdamW fallback).
Presets (set in the config files): tiny = embed_dim 192, depth 12, num_heads 3 (5,362,762
parameters at patch 4, 32x32, 10 classes); small = embed_dim 384, depth 12, num_heads 6
(21,342,346 parameters).
"""

import torch
import torch.nn.functional as F
from torch import nn

from common.pretrained import build_pretrained
from common.transformer import Attention, Block, drop_path, init_weights

# Attention, Block and drop_path live in common.transformer (the text projects use them too).
__all__ = [
    "Attention",
    "Block",
    "PatchEmbed",
    "Resized",
    "VisionTransformer",
    "drop_path",
    "torchvision_vit_b16",
]


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each one: (B, C, H, W) -> (B, N, D).

    A Conv2d with kernel = stride = patch_size sees every pixel exactly once, so it equals
    flattening each (C, p, p) patch to a vector of C*p*p and applying one Linear(C*p*p, D) shared
    by all patches; the conv is the same maths in one fast kernel. N = (H / p) * (W / p).
    """

    def __init__(
        self, image_size: int = 32, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 192
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}: "
                "the patches must tile the image"
            )
        self.image_size, self.patch_size = image_size, patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        H, W = x.shape[-2:]
        if (H, W) != (self.image_size, self.image_size):
            # The position embeddings have one entry per patch of the configured size: another
            # size would give a different N (or silently drop the border pixels).
            raise ValueError(
                f"got {H}x{W} images, the model was built for "
                f"{self.image_size}x{self.image_size} with patch {self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/p, W/p) -> (B, N, D)


class VisionTransformer(nn.Module):
    """Patch embedding, learned position embeddings, `depth` blocks, LayerNorm, pooling, Linear.

    (B, C, H, W) -> (B, N, D) patches [+ class token: (B, 1 + N, D)] -> blocks -> (B, D) pooled
    (the class token's output for pool="cls", the mean over patch tokens for pool="mean")
    -> (B, num_classes) logits. drop_rate is the original ViT's dropout: after adding the
    position embeddings and after every Linear but qkv. drop_path_rate grows linearly from 0 at
    the first block to drop_path_rate at the last.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        num_tokens = self.patch_embed.num_patches + (pool == "cls")
        # A learned token whose output summarises the image (BERT's [CLS]); "mean" pools instead.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        # Attention is permutation-equivariant: without these the model could not tell where a
        # patch came from.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth from 0 at the first block to drop_path_rate at the last (plain floats,
        # not torch.linspace: that would break building the net on the meta device).
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, r) for r in rates)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, x):  # (B, C, H, W) -> (B, D)
        x = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = self.norm(self.blocks(self.pos_drop(x + self.pos_embed)))
        return x[:, 0] if self.pool == "cls" else x.mean(dim=1)

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.forward_features(x))


class Resized(nn.Module):
    """Resize (B, C, h, w) -> (B, C, size, size) bilinearly, then run `net`.

    For a net whose position embeddings fix its input size (a pretrained ViT-B/16 wants 224x224)
    fed smaller images (32x32 CIFAR): upsampling invents no detail, but it lets the pretrained
    features apply. A no-op when the images already have the size.
    """

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x):
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            # Antialiasing matters only when shrinking; upsampling is faster without it.
            shrink = h > self.size or w > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=shrink)
        return self.net(x)


def torchvision_vit_b16(
    num_classes: int, pretrained: bool = False, image_size: int = 224
) -> nn.Module:
    """torchvision's ViT-B/16 (86M parameters) with a fresh Linear(768, num_classes) head.

    The net is built for image_size x image_size inputs (224 with the ImageNet weights, whose
    position embeddings are for a 14x14 grid of patches) and wrapped in Resized, so smaller
    images are upsampled first. pretrained=True downloads the ImageNet-1k weights (330 MB).
    Its parameters are named `class_token`, `encoder.pos_embedding`, `conv_proj`, `heads.head`.
    """
    from torchvision.models import ViT_B_16_Weights, vit_b_16

    if not pretrained:
        net = vit_b_16(weights=None, image_size=image_size)
    else:
        if image_size != 224:
            raise ValueError(
                f"the pretrained ViT-B/16 weights are for 224x224 images, got image_size="
                f"{image_size}: use image_size=224 (smaller images are upsampled to it)"
            )
        net = build_pretrained(vit_b_16, ViT_B_16_Weights.IMAGENET1K_V1, "ViT-B/16")
    net.heads.head = nn.Linear(net.hidden_dim, num_classes)
    return Resized(net, image_size)
