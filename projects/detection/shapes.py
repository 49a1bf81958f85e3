"""Synthetic detection data: circles, squares and triangles on plain or noisy backgrounds, with
the tight box of every shape. Pure tensor code, vectorized over images; `data.ShapesDataModule`
serves it."""

import torch

SHAPES = ("circle", "square", "triangle")
CHUNK = 4096  # images drawn at a time (even): bounds the working memory, not the result
MIN_COLOUR_GAP = 80  # mean |shape - background| over RGB, in 0..255: every shape stands out


def place_boxes(
    counts: torch.Tensor,
    sizes: torch.Tensor,
    image_size: int,
    max_overlap: float,
    gen: torch.Generator,
    tries: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square boxes of side `sizes` (n, m), the first counts[i] of each row placed at random.

    A box is redrawn (up to `tries` times, then dropped) while it would bring the covered part
    of an earlier box above `max_overlap` of that box's area: shapes drawn later lie on top, so
    each object keeps most of itself in view (and IoU <= max_overlap for every pair). Vectorized
    over the n images: one loop step per slot and try. Returns nominal boxes (n, m, 4) xyxy and
    which slots hold an object, bool (n, m).
    """
    n, m = sizes.shape
    boxes = torch.zeros(n, m, 4)
    placed = torch.zeros(n, m, dtype=torch.bool)
    covered = torch.zeros(n, m)  # area of each box already under later boxes
    area = sizes.float() ** 2
    side = sizes.float()
    for k in range(m):
        pending = k < counts  # (n,)
        free = (image_size - sizes[:, k] + 1).float()  # top-left positions that fit
        for _ in range(tries):
            if not pending.any():
                break
            x1 = (torch.rand(n, generator=gen) * free).floor()
            y1 = (torch.rand(n, generator=gen) * free).floor()
            cand = torch.stack([x1, y1, x1 + side[:, k], y1 + side[:, k]], 1)  # (n, 4)
            earlier = boxes[:, :k]  # (n, k, 4)
            w = (
                torch.minimum(cand[:, None, 2], earlier[..., 2])
                - torch.maximum(cand[:, None, 0], earlier[..., 0])
            ).clamp(min=0)
            h = (
                torch.minimum(cand[:, None, 3], earlier[..., 3])
                - torch.maximum(cand[:, None, 1], earlier[..., 1])
            ).clamp(min=0)
            inter = w * h * placed[:, :k]  # (n, k)
            fits = ((covered[:, :k] + inter) <= max_overlap * area[:, :k]).all(1)
            take = pending & fits
            boxes[take, k] = cand[take]
            placed[take, k] = True
            covered[:, :k] += inter * take[:, None]
            pending &= ~fits
    return boxes, placed


def distinct_colours(background: torch.Tensor, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """Random RGB colours (*shape) at least MIN_COLOUR_GAP (mean over channels) from
    `background` (broadcastable to shape); redrawn where too close, else black or white."""
    colours = torch.randint(256, shape, generator=gen)
    for _ in range(10):
        close = (colours - background).abs().float().mean(-1) < MIN_COLOUR_GAP
        redraw = torch.randint(256, shape, generator=gen)
        colours = torch.where(close[..., None], redraw, colours)
    close = (colours - background).abs().float().mean(-1) < MIN_COLOUR_GAP
    opposite = torch.where(background < 128, 255, 0).expand(shape)  # a gap >= 128 per channel
    return torch.where(close[..., None], opposite, colours)


def shape_profiles(
    labels: torch.Tensor, left: torch.Tensor, top: torch.Tensor, size: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each shape as two 1-d profiles, (B, window) each: its mask in a window is
    `cols[:, None, :] <= rows[:, :, None]`, (B, window, window), one compare per pixel.

    Shape `labels` (B,) of side `size` with its box's top-left at (left, top) in the window,
    tested at pixel centres. circle: (x - cx)^2 <= r^2 - (y - cy)^2; square: 0 <= 1 inside the
    box, 2 or -1 outside; triangle (apex up, base at the bottom): |x - cx| <= (y - top) / 2,
    -1 above or below it.
    """
    grid = torch.arange(window) + 0.5  # (W,) pixel centres
    x0, y0, s = (t.float().view(-1, 1) for t in (left, top, size))  # (B, 1)
    xs, ys = grid - x0, grid - y0  # (B, W): from the box's left and top edges
    in_x, in_y = (xs > 0) & (xs < s), (ys > 0) & (ys < s)
    r = s / 2
    circle = ((xs - r).square(), r.square() - (ys - r).square())
    square = (torch.where(in_x, 0.0, 2.0), torch.where(in_y, 1.0, -1.0))
    triangle = ((xs - r).abs(), torch.where(in_y, ys / 2, -1.0))
    kind = labels.view(-1, 1)
    cols, rows = (
        torch.where(kind == 0, c, torch.where(kind == 1, q, t))
        for c, q, t in zip(circle, square, triangle, strict=True)
    )
    return cols, rows


def generate_shapes(
    n: int,
    image_size: int = 128,
    max_objects: int = 4,
    min_size: int = 16,
    max_size: int = 48,
    num_classes: int = 3,
    max_overlap: float = 0.5,
    noise: float = 24.0,
    seed: int = 0,
    split_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images of 1..max_objects shapes (classes SHAPES[:num_classes]) on random backgrounds.

    Each background is one random colour, plain or (every other image: splits and loaders
    shuffle) with grey noise of standard deviation `noise` (uniform, one value per pixel); each
    shape has a random colour far from it, a side of min_size..max_size pixels and a place from
    `place_boxes`, and is drawn over the ones before it. A box is the tight extent of its shape's
    pixels (the whole shape, even where a later one covers part of it). Seeded by (seed,
    split_seed): splits differ, runs repeat. Returns images uint8 (n, 3, S, S), boxes (n, M, 4)
    xyxy, labels (n, M) (-1 past each image's count) and counts (n,), M = max_objects.

    Vectorized per slot over CHUNK images: a shape is a compare of two 1-d profiles on a
    max_size window, painted through a strided view of every window of the images (`unfold`),
    indexed by each image's window position: no per-pixel index tensors.
    """
    s_img, m, window = image_size, max_objects, max_size
    gen = torch.Generator().manual_seed(seed * 1_000_003 + split_seed + 1)
    counts = torch.randint(1, m + 1, (n,), generator=gen)
    labels = torch.randint(num_classes, (n, m), generator=gen)
    sizes = torch.randint(min_size, max_size + 1, (n, m), generator=gen)
    nominal, placed = place_boxes(counts, sizes, s_img, max_overlap, gen)  # (n, m, 4), (n, m)
    background = torch.randint(256, (n, 3), generator=gen)
    # Noise lives in uint8: grain in [0, 2a] on a colour in [a, 255 - a], shifted down by a.
    a = min(127, round(noise * 3**0.5))  # uniform on [-a, a] has standard deviation a / sqrt(3)
    noisy = torch.arange(n) % 2 == 1
    background[noisy] = background[noisy].clamp(a, 255 - a)
    colours = distinct_colours(background[:, None], (n, m, 3), gen).to(torch.uint8)
    base = torch.where(noisy[:, None], background - a, background).to(torch.uint8)  # (n, 3)

    images = torch.empty(n, 3, s_img, s_img, dtype=torch.uint8)
    boxes = torch.zeros(n, m, 4)
    for start in range(0, n, CHUNK):
        chunk = images[start : start + CHUNK]  # a view: written in place
        b = len(chunk)
        flat = base[start : start + b].view(b, 3, 1, 1)
        # CHUNK is even, so the chunk's odd rows are the noisy images. Plain: (b/2, 3, S, S).
        chunk[0::2].copy_(flat[0::2].expand(-1, -1, s_img, s_img))
        grain = torch.randint(
            0, 2 * a + 1, (b // 2, 1, s_img, s_img), generator=gen, dtype=torch.uint8
        )
        torch.add(flat[1::2], grain, out=chunk[1::2])  # (b/2, 3, S, S), no overflow
        windows = chunk.unfold(2, window, 1).unfold(3, window, 1)  # (b, 3, S-W+1, S-W+1, W, W)
        for j in range(m):
            idx = placed[start : start + b, j].nonzero().squeeze(1)  # images with a j-th shape
            g = start + idx
            x1, y1 = nominal[g, j, 0].long(), nominal[g, j, 1].long()
            # Each window lies inside the image and holds the whole shape.
            wx, wy = x1.clamp(max=s_img - window), y1.clamp(max=s_img - window)
            cols, rows = shape_profiles(labels[g, j], x1 - wx, y1 - wy, sizes[g, j], window)
            # Tight extents from the profiles: a column is drawn where it is <= some row.
            cols_hit = cols <= rows.max(1, keepdim=True).values  # (k, W)
            rows_hit = rows >= cols.min(1, keepdim=True).values
            boxes[g, j] = torch.stack(
                [
                    wx + cols_hit.int().argmax(1),
                    wy + rows_hit.int().argmax(1),
                    wx + window - cols_hit.flip(1).int().argmax(1),
                    wy + window - rows_hit.flip(1).int().argmax(1),
                ],
                1,
            ).float()
            mask = cols[:, None, :] <= rows[:, :, None]  # (k, W, W)
            patch = windows[idx, :, wy, wx]  # (k, 3, W, W)
            colour = colours[g, j].view(-1, 3, 1, 1)
            windows[idx, :, wy, wx] = torch.where(mask[:, None], colour, patch)

    # Objects that found no place are dropped; the rest move to the front, in drawing order.
    order = torch.sort((~placed).int(), dim=1, stable=True).indices  # (n, m)
    counts = placed.sum(1)
    real = torch.arange(m) < counts[:, None]  # (n, m)
    labels = torch.where(real, labels.gather(1, order), -1)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4)) * real[..., None]
    return images, boxes, labels, counts
