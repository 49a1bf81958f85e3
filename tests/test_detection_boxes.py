"""The detector's box logic and nets: parametrization, assignment, loss, NMS, shapes, budget."""

import urllib.error

import pytest
import torch
from torch import nn
from torchvision import ops

from projects.detection.boxes import (
    assign,
    candidates,
    cell_centers,
    decode,
    detection_loss,
    encode,
    nms,
    perfect_outputs,
    postprocess,
)
from projects.detection.nets import Backbone, Detector, torchvision_backbone

STRIDE, H, W, C = 8, 8, 8, 3  # a 64 x 64 image, 8 x 8 grid, 3 classes


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: with a second busy process on 2 cores, the 2-thread pool waits on a
    descheduled thread in every op, and the training test takes 10-20 s instead of 0.2 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def target(boxes, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def cell(i, j):  # the flat index of cell (row i, column j)
    return i * W + j


# Two images: three objects of different sizes and classes, and one big object.
TARGETS = [
    target([[4, 6, 30, 28], [36, 34, 60, 62], [18, 40, 27, 49]], [0, 2, 1]),
    target([[10, 12, 50, 44]], [1]),
]


def test_cell_centers_are_row_major():
    centers = cell_centers(2, 3, 8)
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert centers.tolist() == expected


def test_encode_decode_round_trip():
    torch.manual_seed(0)
    centers = torch.rand(100, 2) * 200
    # Boxes around their points (0.5 to 150 pixels to each side): what encode can represent.
    d = torch.rand(100, 4) * 150 + 0.5
    boxes = torch.cat([centers - d[:, :2], centers + d[:, 2:]], dim=1)
    for stride in (8, 16):
        torch.testing.assert_close(
            decode(encode(boxes, centers, stride), centers, stride), boxes, rtol=1e-5, atol=1e-5
        )
        reg = torch.randn(100, 4)
        torch.testing.assert_close(encode(decode(reg, centers, stride), centers, stride), reg)
    # In float64 the round trip is exact to rounding.
    b64, c64 = boxes.double(), centers.double()
    torch.testing.assert_close(decode(encode(b64, c64, 8), c64, 8), b64, rtol=0, atol=1e-10)
    # Output 0 is a box of 2 x 2 cells around the point, and decode never inverts a box.
    assert decode(torch.zeros(4), torch.tensor([12.0, 20.0]), 8).tolist() == [4, 12, 20, 28]
    wild = decode(torch.randn(1000, 4) * 30, torch.zeros(1000, 2), 8)
    assert torch.isfinite(wild).all() and (wild[:, 2:] >= wild[:, :2]).all()


def test_assign_centre_cell_and_neighbours():
    obj, cls, box = assign([target([[17, 17, 39, 39]], [2])], H, W, STRIDE, C)
    # Centre (28, 28) is in cell (3, 3); cell centres 20, 28, 36 of rows/columns 2-4 are inside.
    positive = obj[0].nonzero().flatten().tolist()
    assert positive == [cell(i, j) for i in (2, 3, 4) for j in (2, 3, 4)]
    assert (cls[0, positive] == 2).all() and (cls[0][obj[0] == 0] == -1).all()
    assert (box[0, positive] == torch.tensor([17.0, 17, 39, 39])).all()
    assert (box[0][obj[0] == 0] == 0).all()
    # radius 0: YOLOv1, the centre cell alone.
    obj, _, _ = assign([target([[17, 17, 39, 39]], [2])], H, W, STRIDE, C, radius=0)
    assert obj[0].nonzero().flatten().tolist() == [cell(3, 3)]


def test_assign_tiny_box_keeps_its_centre_cell():
    # A 2-pixel box whose cell centre (12, 12) lies outside it: still one positive, its cell.
    obj, cls, box = assign([target([[9, 9, 11, 11]], [1])], H, W, STRIDE, C)
    assert obj[0].nonzero().flatten().tolist() == [cell(1, 1)] and cls[0, cell(1, 1)] == 1


def test_assign_smallest_box_wins_a_shared_cell():
    # small's centre cell is (3, 3), big's (4, 4); their 3 x 3 blocks share rows/columns 3-4.
    big, small = [2, 2, 62, 62], [18, 18, 38, 38]
    for boxes, labels in (([big, small], [0, 1]), ([small, big], [1, 0])):  # whatever the order
        obj, cls, box = assign([target(boxes, labels)], H, W, STRIDE, C)
        for i, j in ((2, 2), (3, 3), (3, 4), (4, 4)):  # even big's centre cell goes to small
            assert cls[0, cell(i, j)] == 1 and box[0, cell(i, j)].tolist() == small
        for i, j in ((5, 5), (3, 5), (5, 3)):
            assert cls[0, cell(i, j)] == 0 and box[0, cell(i, j)].tolist() == big
        assert obj[0].sum() == 9 + 9 - 4  # each shared cell is counted once


def test_assign_ignores_out_of_image_and_degenerate_boxes():
    boxes = [
        [70, 10, 90, 30],  # right of the 64 x 64 image
        [-30, -30, -5, -5],  # above and left of it
        [20, 20, 20, 40],  # zero width
        [30, 30, 10, 10],  # inverted
        [float("nan"), 0, 10, 10],
    ]
    obj, cls, box = assign([target(boxes, [0] * 5), target([], [])], H, W, STRIDE, C)
    assert obj.sum() == 0 and (cls == -1).all() and (box == 0).all()
    # A box half outside the image is clipped to its visible part.
    obj, _, box = assign([target([[40, 40, 90, 90]], [0])], H, W, STRIDE, C)
    assert box[0][obj[0] > 0].unique(dim=0).tolist() == [[40, 40, 64, 64]]
    with pytest.raises(ValueError, match="labels must be in"):
        assign([target([[0, 0, 10, 10]], [3])], H, W, STRIDE, C)


def test_loss_of_perfect_outputs_is_near_zero():
    outputs = perfect_outputs(TARGETS, H, W, STRIDE, C)
    assert outputs.shape == (2, H, W, 1 + C + 4)
    losses = detection_loss(outputs, TARGETS, STRIDE, C)
    assert losses["box"] < 1e-3 and losses["cls"] < 1e-3 and losses["obj"] < 1e-3
    assert losses["loss"] < 1e-2


def test_loss_grows_for_shifted_boxes_and_wrong_classes():
    outputs = perfect_outputs(TARGETS, H, W, STRIDE, C)
    perfect = detection_loss(outputs, TARGETS, STRIDE, C)
    shifted = [{**t, "boxes": t["boxes"] + torch.tensor([3.0, 2, 3, 2])} for t in TARGETS]
    moved = detection_loss(outputs, shifted, STRIDE, C)
    assert moved["box"] > 0.05 > perfect["box"] and moved["loss"] > perfect["loss"]
    wrong = [{**t, "labels": (t["labels"] + 1) % C} for t in TARGETS]
    relabelled = detection_loss(outputs, wrong, STRIDE, C)
    assert relabelled["cls"] > 10 and relabelled["box"] < 1e-3  # ~2 * logit per positive


def test_no_objects_gives_finite_loss_and_gradients():
    torch.manual_seed(0)
    outputs = torch.randn(2, H, W, 1 + C + 4, requires_grad=True)
    empty = [target([], []), target([], [])]
    losses = detection_loss(outputs, empty, STRIDE, C)
    assert losses["cls"] == 0 and losses["box"] == 0 and losses["obj"] > 0
    losses["loss"].backward()
    assert torch.isfinite(outputs.grad).all()
    assert postprocess(outputs.detach(), STRIDE, score_threshold=1.0)[0]["boxes"].shape == (0, 4)


def raw_outputs(cells):
    """Outputs (1, H, W, 1 + C + 4) where only `cells` [(i, j, box, label, score)] fire."""
    out = torch.full((1, H * W, 1 + C + 4), -10.0)
    centers = cell_centers(H, W, STRIDE)
    for i, j, box, label, score in cells:
        k = cell(i, j)
        out[0, k, 0] = torch.logit(torch.tensor(score))  # class probability ~1, so score = obj
        out[0, k, 1 + label] = 10.0
        out[0, k, 1 + C :] = encode(torch.tensor(box), centers[k], STRIDE)
    return out.reshape(1, H, W, -1)


def test_postprocess_class_aware_nms():
    a, a_shifted = [8.0, 8, 40, 40], [10.0, 10, 42, 42]  # IoU 0.78
    far = [44.0, 44, 60, 60]
    outputs = raw_outputs(
        [
            (2, 2, a, 0, 0.9),
            (3, 3, a_shifted, 0, 0.6),  # same class, overlapping: suppressed
            (3, 2, a_shifted, 1, 0.7),  # other class, overlapping: kept
            (6, 6, far, 0, 0.5),  # alone: kept
        ]
    )
    (result,) = postprocess(outputs, STRIDE)
    assert result["labels"].tolist() == [0, 1, 0]
    torch.testing.assert_close(result["scores"], torch.tensor([0.9, 0.7, 0.5]))
    torch.testing.assert_close(result["boxes"], torch.tensor([a, a_shifted, far]))
    # Best first, so max_detections keeps the best; score_threshold drops the weak.
    (top,) = postprocess(outputs, STRIDE, max_detections=1)
    assert top["scores"].tolist() == pytest.approx([0.9])
    (confident,) = postprocess(outputs, STRIDE, score_threshold=0.65)
    assert confident["labels"].tolist() == [0, 1]


def test_postprocess_recovers_perfect_targets():
    results = postprocess(perfect_outputs(TARGETS, H, W, STRIDE, C), STRIDE)
    for result, t in zip(results, TARGETS, strict=True):
        assert len(result["boxes"]) == len(t["boxes"])  # one per object, NMS drops the rest
        iou = ops.box_iou(result["boxes"], t["boxes"])  # (K, N)
        best, match = iou.max(dim=1)
        assert (best > 0.99).all() and sorted(match.tolist()) == list(range(len(t["boxes"])))
        assert (result["labels"] == t["labels"][match]).all() and (result["scores"] > 0.99).all()


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize("size", [128, 96])
def test_detector_output_shape(size, stride):
    net = Detector(num_classes=C, stride=stride).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, size // stride, size // stride, 1 + C + 4)
    assert net.stride == stride
    # At init every cell's objectness is the prior, 0.01: nothing survives postprocess.
    torch.testing.assert_close(out[..., 0].sigmoid().mean(), torch.tensor(0.01), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="not divisible"):
        net(torch.randn(1, 3, size + 4, size + 4))


def test_parameter_budget():
    # Small enough to train on a CPU in minutes.
    assert n_params(Detector()) == 761_529
    assert n_params(Backbone()) == 462_880 and n_params(Backbone(stride=16)) == 906_016


def test_torchvision_backbone():
    net = Detector(num_classes=C, stride=16, backbone="resnet18").eval()
    assert net.backbone.out_chans == 256
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 4, 4, 1 + C + 4)
    assert torchvision_backbone("resnet18", stride=8).out_chans == 128


def test_pretrained_download_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="could not download") as info:
        torchvision_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert torch.hub.get_dir() in message and "pretrained=False" in message


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = Detector(num_classes=C, width=8)
    images = torch.randn(2, 3, 64, 64)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = detection_loss(net(images), TARGETS, net.stride, C)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.7 * losses[0]


def random_targets(gen, batch: int, size: int = 64):
    """Images with 0-6 boxes each, some off the image, some degenerate."""
    targets = []
    for _ in range(batch):
        n = int(torch.randint(0, 7, (), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * (size + 20) - 10
        wh = torch.rand(n, 2, generator=gen) * 40 * (torch.rand(n, 1, generator=gen) > 0.1)
        boxes = torch.cat([xy, xy + wh], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, C, (n,), generator=gen)})
    return targets


def test_batched_assignment_is_each_image_assigned_alone():
    gen = torch.Generator().manual_seed(0)
    targets = random_targets(gen, 16)
    batched = assign(targets, H, W, STRIDE, C)
    alone = [assign([t], H, W, STRIDE, C) for t in targets]
    for i, part in enumerate(batched):
        torch.testing.assert_close(part, torch.cat([a[i] for a in alone]))
    assert batched[0].sum() > 20  # the images do have positives


def test_batched_postprocess_is_each_image_alone_and_the_one_image_nms():
    gen = torch.Generator().manual_seed(1)
    outputs = torch.randn(6, H, W, 1 + C + 4, generator=gen) * 2
    batched = postprocess(outputs, STRIDE, max_detections=5)
    for b, result in enumerate(batched):
        (alone,) = postprocess(outputs[b : b + 1], STRIDE, max_detections=5)
        single = nms(*[x[0] for x in candidates(outputs[b : b + 1], STRIDE)], max_detections=5)
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(result[key], alone[key])
            torch.testing.assert_close(result[key], single[key])
        assert 0 < len(result["scores"]) <= 5
        assert (result["scores"].diff() <= 0).all()  # best first
