"""Box logic of the anchor-free detector in `nets.py`: pure functions of tensors, no modules.

The image is cut into an H x W grid of stride x stride cells (YOLOv1); cell (i, j) has its centre
at pixel ((j + 0.5) * stride, (i + 0.5) * stride) and predicts, per `nets.DetectionHead`,
[objectness logit, num_classes class logits, 4 box log-distances]. Boxes are xyxy in pixels,
flattened cells are row-major (index i * W + j, as `outputs.reshape(B, H * W, -1)` gives).

- `cell_centers`, `encode`, `decode`: the box parametrization, l, t, r, b = stride * exp(reg).
- `assign`: which cells are responsible for which ground-truth box (centre sampling, FCOS).
- `detection_loss`: focal loss on objectness, cross-entropy on classes, GIoU loss on boxes.
- `postprocess`: raw outputs -> per-image {"boxes", "scores", "labels"} after class-aware NMS,
  the format torchmetrics' MeanAveragePrecision takes.
- `perfect_outputs`: the raw outputs a perfect detector would give, for tests.
"""

import torch
import torch.nn.functional as F
from torchvision import ops

# decode clamps the log-distances here: e^10 * stride is ~22,000 cells, far beyond any image, so
# this never binds on a sane prediction; it only turns a diverging output into a huge finite box
# instead of inf (and then NaN in the IoU loss).
MAX_LOG_DISTANCE = 10.0


def cell_centers(h: int, w: int, stride: int, device=None) -> torch.Tensor:
    """(H * W, 2) pixel coordinates (x, y) of the cell centres, row-major: x varies fastest."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([cx, cy], dim=-1).reshape(-1, 2)


def encode(
    boxes: torch.Tensor, centers: torch.Tensor, stride: int, eps: float = 1e-3
) -> torch.Tensor:
    """xyxy boxes (..., 4) seen from points (..., 2) -> regression targets (..., 4): the log of
    the distances (l, t, r, b) from the point to the left, top, right and bottom sides, in
    strides. The inverse of `decode` for points inside the boxes; a side on or behind the point
    (a tiny box that misses its cell's centre) is clamped to eps pixels, since a log-distance
    can only describe boxes around the point."""
    d = torch.cat([centers - boxes[..., :2], boxes[..., 2:] - centers], dim=-1)  # (..., 4)
    return torch.log(d.clamp(min=eps) / stride)


def decode(reg: torch.Tensor, centers: torch.Tensor, stride: int) -> torch.Tensor:
    """Regression outputs (..., 4) at points (..., 2) -> xyxy boxes (..., 4) in pixels.

    Distances are stride * exp(reg): always positive, so the box always contains its point and
    can never come out inverted (x2 < x1); reg = 0 is a box of 2 x 2 cells.
    """
    d = torch.exp(reg.clamp(max=MAX_LOG_DISTANCE)) * stride  # (..., 4) l, t, r, b in pixels
    return torch.cat([centers - d[..., :2], centers + d[..., 2:]], dim=-1)


def assign(
    targets: list[dict[str, torch.Tensor]],
    h: int,
    w: int,
    stride: int,
    num_classes: int,
    radius: int = 1,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decide which cells are positives, and for which box, in each image.

    A box's positives are the cell that contains its centre (YOLOv1: always, however small the
    box) plus the cells within `radius` cells of it whose centres fall inside the box (FCOS's
    centre sampling). More positives per object than YOLOv1's one give more training signal
    and let neighbouring cells agree (NMS then keeps the best); restricting them to near the
    centre keeps cells at the object's border, whose features mostly see background, out.

    A cell claimed by several boxes goes to the one of smallest area (FCOS's rule): a big box has
    many candidate cells and loses little by ceding one, while a small box (often inside the big
    one, like a face on a person) may have only that cell, and would otherwise never be learned.

    Boxes are first clipped to the image (H * stride x W * stride): the target is the visible
    part, which is also what `postprocess` can predict. Boxes with no area left (outside the
    image, degenerate, NaN) are ignored. Labels must be in [0, num_classes).

    Returns obj_target (B, H * W) float 0/1, cls_target (B, H * W) int64 (-1 for negatives),
    box_target (B, H * W, 4) xyxy (zeros for negatives), on `device` (default: the first image's
    boxes' device).
    """
    if device is None:
        device = targets[0]["boxes"].device if targets else None
    B, HW = len(targets), h * w
    boxes, labels, valid = pad_targets(targets, device)  # (B, N, 4), (B, N), (B, N)
    if B == 0 or boxes.shape[1] == 0:
        return (
            torch.zeros(B, HW, device=device),
            torch.full((B, HW), -1, dtype=torch.int64, device=device),
            torch.zeros(B, HW, 4, device=device),
        )
    boxes = ops.clip_boxes_to_image(boxes, (h * stride, w * stride))
    # Padding, and boxes with no area left (outside the image, degenerate, NaN), claim nothing.
    valid &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    check_labels(labels, valid, num_classes)

    centers = cell_centers(h, w, stride, device)  # (HW, 2)
    cells = torch.arange(HW, device=device)
    rows, cols = cells // w, cells % w  # (HW,) each
    # The cell holding each box's centre; a centre on the image's far edge goes to the last.
    box_centers = (boxes[..., :2] + boxes[..., 2:]) / 2  # (B, N, 2)
    ci = (box_centers[..., 1] / stride).floor().long().clamp(0, h - 1)  # (B, N)
    cj = (box_centers[..., 0] / stride).floor().long().clamp(0, w - 1)
    drow = (rows - ci[..., None]).abs()  # (B, N, HW) distance in cells to the centre cell
    dcol = (cols - cj[..., None]).abs()
    x, y = centers[:, 0], centers[:, 1]  # (HW,) each
    inside = (
        (x > boxes[..., 0, None])
        & (x < boxes[..., 2, None])
        & (y > boxes[..., 1, None])
        & (y < boxes[..., 3, None])
    )  # (B, N, HW)
    candidate = ((drow <= radius) & (dcol <= radius) & inside) | ((drow == 0) & (dcol == 0))
    candidate &= valid[..., None]

    # Each cell takes its smallest candidate box: inf where a box does not claim the cell.
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (B, N)
    cost = torch.where(candidate, area[..., None], torch.inf)  # (B, N, HW)
    min_area, winner = cost.min(dim=1)  # (B, HW) each
    positive = torch.isfinite(min_area)
    obj_target = positive.float()
    cls_target = torch.where(positive, labels.gather(1, winner), -1)
    won = boxes.gather(1, winner[..., None].expand(-1, -1, 4))  # (B, HW, 4)
    box_target = torch.where(positive[..., None], won, 0.0)
    return obj_target, cls_target, box_target


def pad_targets(
    targets: list[dict[str, torch.Tensor]], device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image boxes (N_i, 4) and labels (N_i,) -> boxes (B, N, 4) float32, labels (B, N)
    int64 and valid (B, N) bool, N = max N_i: one tensor for the batch, so the assignment is a
    few batched ops instead of a loop of them per image."""
    boxes = [t["boxes"].to(device, torch.float32).reshape(-1, 4) for t in targets]
    labels = [t["labels"].to(device, torch.int64).reshape(-1) for t in targets]
    for b, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        if len(bx) != len(lb):
            raise ValueError(f"image {b}: {len(bx)} boxes but {len(lb)} labels")
    if not targets:
        empty = torch.zeros(0, 0, device=device)
        return empty[..., None].expand(0, 0, 4), empty.long(), empty.bool()
    counts = torch.tensor([len(bx) for bx in boxes], device=device)
    valid = torch.arange(int(counts.max()), device=device) < counts[:, None]  # (B, N)
    boxes = torch.nn.utils.rnn.pad_sequence(boxes, batch_first=True)
    labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True)
    return boxes, labels, valid


def check_labels(labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> None:
    """Labels of the boxes that count must be in [0, num_classes): one check for the batch."""
    bad = valid & ((labels < 0) | (labels >= num_classes))  # (B, N)
    if bool(bad.any()):
        b = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(
            f"image {b}: labels must be in [0, {num_classes}), got {labels[b][valid[b]].tolist()} "
            "(a dataset that numbers classes from 1, with 0 for background, needs labels - 1)"
        )


def detection_loss(
    outputs: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    stride: int,
    num_classes: int,
    box_weight: float = 5.0,
    radius: int = 1,
) -> dict[str, torch.Tensor]:
    """Raw outputs (B, H, W, 1 + C + 4) and targets -> {"loss", "obj", "cls", "box"} scalars.

    - obj: sigmoid focal loss (Lin et al. 2017) over *all* cells. A 16 x 16 grid with three
      objects has ~20 positive cells and ~240 negatives, most of them trivially empty; plain BCE
      would be dominated by these easy negatives, the focal loss's (1 - p_t)^2 factor mutes
      them so the loss is about the hard cells.
    - cls: cross-entropy over the positive cells only (a negative cell's class is meaningless;
      objectness already says "nothing here").
    - box: GIoU loss (Rezatofighi et al. 2019) between the decoded boxes and the targets on the
      positive cells. IoU is scale-invariant, so a 5-pixel error costs more on a small box than
      on a big one, as it should and as mAP measures; L1 on distances would need per-size
      weights. The G term keeps a gradient even when the boxes do not overlap.

    All three are sums divided by the number of positive cells in the batch (at least 1), as in
    RetinaNet and FCOS: the loss per object does not depend on how many objects the batch has,
    and a batch with no objects gives obj alone, never 0 / 0. loss = obj + cls +
    box_weight * box; 5 is YOLOv1's lambda_coord (and YOLOX's IoU-loss weight). The maths runs
    in float32 even under autocast: logs and exps of half-precision logits lose too much.
    """
    outputs = outputs.float()
    B, H, W, D = outputs.shape
    if D != 1 + num_classes + 4:
        raise ValueError(f"outputs have {D} channels, expected 1 + {num_classes} + 4")
    out = outputs.reshape(B, H * W, D)
    obj_target, cls_target, box_target = assign(
        targets, H, W, stride, num_classes, radius, device=outputs.device
    )
    positive = obj_target > 0  # (B, HW)
    normalizer = positive.sum().clamp(min=1).float()

    obj = ops.sigmoid_focal_loss(out[..., 0], obj_target, reduction="sum") / normalizer
    # Sums over the positives: cross_entropy's "mean" of zero cells would be NaN.
    cls = F.cross_entropy(
        out[..., 1 : 1 + num_classes][positive], cls_target[positive], reduction="sum"
    )
    centers = cell_centers(H, W, stride, outputs.device).expand(B, -1, -1)[positive]  # (P, 2)
    pred_boxes = decode(out[..., 1 + num_classes :][positive], centers, stride)  # (P, 4)
    box = ops.generalized_box_iou_loss(pred_boxes, box_target[positive], reduction="sum")
    cls, box = cls / normalizer, box / normalizer
    return {"loss": obj + cls + box_weight * box, "obj": obj, "cls": cls, "box": box}


@torch.no_grad()
def postprocess(
    outputs: torch.Tensor,
    stride: int,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Raw outputs (B, H, W, 1 + C + 4) -> per image {"boxes" (K, 4) xyxy pixels, "scores"
    (K,), "labels" (K,) int64}, best first, K <= max_detections.

    score = sigmoid(obj) * max softmax(cls): the probability that an object is here times that
    it is of the best class. Boxes are clipped to the image (H * stride x W * stride). Several
    cells predict each object (`assign` trains up to (2 * radius + 1)^2 of them), so NMS drops
    every box that overlaps a higher-scoring box of the same class by more than iou_threshold;
    class-aware, so a rider and their horse do not suppress each other. The low default
    threshold keeps the low-confidence detections that mAP's precision-recall curve needs.
    """
    boxes, scores, labels = candidates(outputs, stride)  # (B, HW, 4), (B, HW), (B, HW)
    B, HW = scores.shape
    image = torch.arange(B, device=scores.device)[:, None].expand(B, HW)
    keep = scores > score_threshold
    boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
    # One NMS for the whole batch: a box competes only with boxes of its image and class.
    num_classes = outputs.shape[-1] - 5
    kept = ops.batched_nms(boxes, scores, image * num_classes + labels, iou_threshold)
    # `kept` is best first over the batch; regroup by image (stable: still best first in each)
    # and keep each image's first max_detections.
    kept = kept[torch.sort(image[kept], stable=True).indices]
    per_image = torch.bincount(image[kept], minlength=B)  # (B,)
    first = torch.cumsum(per_image, 0) - per_image  # where each image's run starts
    rank = torch.arange(len(kept), device=kept.device) - first[image[kept]]
    kept = kept[rank < max_detections]
    sizes = per_image.clamp(max=max_detections).tolist()  # the one sync
    return [
        {"boxes": b, "scores": s, "labels": c}
        for b, s, c in zip(
            boxes[kept].split(sizes),
            scores[kept].split(sizes),
            labels[kept].split(sizes),
            strict=True,
        )
    ]


def candidates(outputs: torch.Tensor, stride: int) -> tuple[torch.Tensor, ...]:
    """Raw outputs (B, H, W, 1 + C + 4) -> every cell's box (B, HW, 4) xyxy pixels clipped to
    the image, score (B, HW) and best class (B, HW) int64: `postprocess` before its NMS, fixed
    shapes throughout (what `make export` puts in the graph)."""
    outputs = outputs.float()
    B, H, W, D = outputs.shape
    num_classes = D - 5
    out = outputs.reshape(B, H * W, D)
    cls_prob, labels = out[..., 1 : 1 + num_classes].softmax(dim=-1).max(dim=-1)  # (B, HW)
    scores = out[..., 0].sigmoid() * cls_prob  # (B, HW)
    centers = cell_centers(H, W, stride, outputs.device)  # (HW, 2), broadcast over B
    boxes = decode(out[..., 1 + num_classes :], centers, stride)  # (B, HW, 4)
    size = torch.tensor([W, H, W, H], device=boxes.device) * stride  # x1 y1 x2 y2 limits
    boxes = torch.minimum(boxes.clamp(min=0), size)  # clipped to the image
    return boxes, scores, labels


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> dict[str, torch.Tensor]:
    """One image's candidates (N, 4), (N,), (N,) -> {"boxes", "scores", "labels"} kept by a
    class-aware NMS, best first, at most max_detections."""
    keep = scores > score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = ops.batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]  # best first
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def perfect_outputs(
    targets: list[dict[str, torch.Tensor]],
    h: int,
    w: int,
    stride: int,
    num_classes: int,
    logit: float = 10.0,
    radius: int = 1,
) -> torch.Tensor:
    """The raw outputs (B, H, W, 1 + C + 4) of a perfect, confident detector: objectness +logit
    on `assign`'s positive cells and -logit elsewhere, class logits +logit for the target class
    and -logit for the others, and box outputs that `decode` maps exactly onto the target boxes
    (zeros on negative cells). `detection_loss` on them is ~0 and `postprocess` returns the
    (clipped) targets; a box that misses its cell's centre is the one exception (`encode`)."""
    obj_target, cls_target, box_target = assign(targets, h, w, stride, num_classes, radius)
    positive = obj_target > 0  # (B, HW)
    obj = torch.where(positive, logit, -logit)[..., None]  # (B, HW, 1)
    onehot = F.one_hot(cls_target.clamp(min=0), num_classes).bool() & positive[..., None]
    cls = torch.where(onehot, logit, -logit)  # (B, HW, C)
    centers = cell_centers(h, w, stride, obj_target.device)
    reg = torch.where(positive[..., None], encode(box_target, centers, stride), 0.0)  # (B, HW, 4)
    return torch.cat([obj, cls, reg], dim=-1).reshape(len(targets), h, w, 1 + num_classes + 4)
