"""Learnable synthetic data with the real shapes and dtypes, made offline and seeded."""

import torch
import torch.nn.functional as F


def synthetic_images(
    n: int, num_classes: int, shape: tuple[int, ...], seed: int, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, *shape) and int64 labels (n,), where shape is (H, W) or (C, H, W).

    Each class has a random stroke-like glyph half the image's size (the same for every split of
    one `seed`). A sample pastes its class glyph at a random place and contrast onto a noisy
    background: position varies, so a linear model on pixels does poorly while a small CNN,
    being translation-equivariant, learns it to high accuracy within a few hundred steps.
    """
    c, h, w = shape if len(shape) == 3 else (1, *shape)
    gh, gw = max(2, h // 2), max(2, w // 2)
    glyph_gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, c, 4, 4, generator=glyph_gen)
    glyphs = F.interpolate(coarse, size=(gh, gw), mode="bicubic", align_corners=False)
    glyphs = (glyphs > 0.55).float()  # (K, C, gh, gw): thick strokes

    gen = torch.Generator().manual_seed(seed * 1_000_003 + split_seed + 1)
    labels = torch.randint(num_classes, (n,), generator=gen)
    images = 0.35 * torch.rand(n, c, h, w, generator=gen)  # (N, C, H, W) background noise
    contrast = 0.4 + 0.6 * torch.rand(n, generator=gen)
    top = torch.randint(0, h - gh + 1, (n,), generator=gen)
    left = torch.randint(0, w - gw + 1, (n,), generator=gen)
    # Paste every glyph in one indexed add: sample i's window is rows top[i] + (0..gh-1),
    # columns left[i] + (0..gw-1); within a sample no two positions repeat.
    rows = (top[:, None] + torch.arange(gh))[:, None, :, None]  # (N, 1, gh, 1)
    cols = (left[:, None] + torch.arange(gw))[:, None, None, :]  # (N, 1, 1, gw)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(c)[None, :, None, None]
    images[batch, chans, rows, cols] += contrast[:, None, None, None] * glyphs[labels]
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return (images if len(shape) == 3 else images[:, 0]), labels
