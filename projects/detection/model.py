"""YOLO-style detection: loss, mAP, pictures of predictions, and prediction on a file."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.utils import draw_bounding_boxes, make_grid

from common.data.images import NormalizedNet, Normalizer, open_image
from common.errors import UserError
from common.figures import log_figure
from common.module import TemplateModule
from projects.detection.boxes import candidates, detection_loss, nms, postprocess


class DetectionModel(TemplateModule):
    """A single-stage detector (`nets.Detector`) trained on (images, targets) batches.

    images: normalized float (B, 3, S, S); targets: B dicts {"boxes" (N, 4) xyxy pixels,
    "labels" (N,)}. Logs `train/loss` (and its `obj`, `cls`, `box` parts), `val/loss`,
    `val/map50` (mAP at IoU 0.5), `val/map` (mAP averaged over IoU 0.5:0.95, COCO's main
    number) and the same for test, through torchmetrics' MeanAveragePrecision (pycocotools);
    and, each validation, `val/predictions`: images with true (green) and predicted boxes.
    Class names, image size and normalization come with the data spec (`TemplateModule`).
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        box_weight: float = 5.0,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        show_threshold: float = 0.3,
        log_images: int = 8,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.num_classes = num_classes
        self.box_weight = box_weight
        self.nms = dict(
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        self.show_threshold, self.log_images = show_threshold, log_images
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        self._shown = None  # (images, targets, predictions) of the first validation batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, S/stride, S/stride, 1 + C + 4) raw outputs

    def loss(self, outputs: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        return detection_loss(
            outputs, targets, self.net.stride, self.num_classes, box_weight=self.box_weight
        )

    def predict(self, outputs: torch.Tensor) -> list[dict]:
        return postprocess(outputs, self.net.stride, **self.nms)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.loss(self(images), targets)
        if self.logs_this_step():
            self.log("train/loss", losses["loss"], prog_bar=True)
            self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"})
        return losses["loss"]

    def evaluate(self, batch, stage: str) -> list[dict]:
        images, targets = batch
        outputs = self(images)
        getattr(self, f"{stage}_loss").update(self.loss(outputs, targets)["loss"], len(images))
        predictions = self.predict(outputs)
        getattr(self, f"{stage}_map").update(predictions, targets)
        return predictions

    def validation_step(self, batch, batch_idx):
        predictions = self.evaluate(batch, "val")
        if batch_idx == 0 and self.log_images:
            n = self.log_images
            self._shown = (batch[0][:n], batch[1][:n], predictions[:n])

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")

    def _log_map(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_map")
        result = metric.compute()  # synced across processes
        metric.reset()
        self.log(f"{stage}/map50", result["map_50"], prog_bar=stage == "val")
        self.log(f"{stage}/map", result["map"])
        loss = getattr(self, f"{stage}_loss")
        self.log(f"{stage}/loss", loss.compute())
        loss.reset()

    def on_validation_epoch_end(self):
        self._log_map("val")
        if self._shown is not None and not self.trainer.sanity_checking:
            log_figure(self, "val/predictions", self.draw_grid(*self._shown))
        self._shown = None

    def on_test_epoch_end(self):
        self._log_map("test")

    @property
    def class_names(self) -> list[str]:
        return self.data_spec.class_names or [str(i) for i in range(self.num_classes)]

    def draw(self, image: torch.Tensor, prediction: dict, target: dict | None = None):
        """uint8 (3, H, W) with true boxes in green and predicted ones (score >= show_threshold)
        in red, labelled with class and score."""
        image = image.cpu()
        if target is not None and len(target["boxes"]):
            image = draw_bounding_boxes(image, target["boxes"].cpu(), colors="lime", width=1)
        keep = prediction["scores"] >= self.show_threshold
        boxes, scores = prediction["boxes"][keep].cpu(), prediction["scores"][keep].cpu()
        labels = [
            f"{self.class_names[int(c)]} {s:.2f}"
            for c, s in zip(prediction["labels"][keep], scores, strict=True)
        ]
        if len(boxes):
            image = draw_bounding_boxes(image, boxes, labels, colors="red", width=2)
        return image

    def draw_grid(self, images: torch.Tensor, targets: list[dict], predictions: list[dict]):
        """A grid of the first validation images, un-normalized to uint8 for display."""
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        pixels = ((images - low) / (high - low).clamp(min=1e-6) * 255).to(torch.uint8)
        drawn = [self.draw(*args) for args in zip(pixels, predictions, targets, strict=True)]
        return make_grid(torch.stack(drawn), nrow=4, padding=2)

    def output_path(self, path: Path, output: Path | None = None) -> Path:
        """`output`, or `<name>_pred.png` beside the input: a PNG (lossless, as drawn)."""
        output = output or path.with_name(f"{path.stem}_pred.png")
        if output.suffix.lower() != ".png":
            raise UserError(f"output={output} must end in .png: detection writes a PNG image")
        return output

    def read_pixels(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """An image file -> (its pixels uint8 (3, H, W), resized uint8 (3, S, S)): resized to
        S x S, the aspect ratio not kept, as the training images were."""
        spec = self.data_spec
        if spec.image_size is None:
            raise UserError("this checkpoint holds no data description: train it with this repo")
        try:
            with open_image(path) as opened:  # a file over MAX_PIXELS is refused
                original = opened.convert("RGB")
        except (OSError, SyntaxError) as err:  # no image, or a broken one (PIL says which)
            raise UserError(f"cannot read the image {path}: {err}") from err
        pixels = torch.from_numpy(np.array(original)).permute(2, 0, 1)  # (3, H, W) uint8
        size = spec.image_size
        resized = F.interpolate(pixels[None].float(), size=(size, size), mode="bilinear")
        return pixels, resized[0].round().clamp(0, 255).to(torch.uint8)

    def to_image(self, prediction: dict, width: int, height: int) -> dict:
        """Boxes in the S x S input's pixels -> the original image's."""
        size = self.data_spec.image_size
        scale = torch.tensor([width / size, height / size] * 2, device=prediction["boxes"].device)
        return {**prediction, "boxes": prediction["boxes"] * scale}

    def export_spec(self):
        """uint8 pixels (B, 3, S, S) -> every grid cell's box, score and class, before NMS."""
        from common.export import ExportSpec, Tensor

        spec = self.data_spec
        if spec.image_size is None:
            raise UserError("this checkpoint holds no data description: train it with this repo")
        size = spec.image_size
        cells = (size // self.net.stride) ** 2
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (2, 3, size, size), generator=gen, dtype=torch.uint8)
        module = PixelsToCandidates(self.net, spec.mean, spec.std).to(self.device).eval()
        return ExportSpec(
            module=module,
            examples=(pixels,),
            inputs=[Tensor("pixels", "uint8", ["batch", 3, size, size], "RGB, 0-255")],
            outputs=[
                Tensor(
                    "boxes", "float32", ["batch", cells, 4], "x1 y1 x2 y2 in the input's pixels"
                ),
                Tensor("scores", "float32", ["batch", cells], "P(object) x P(its best class)"),
                Tensor("labels", "int64", ["batch", cells], "the best class of each box"),
            ],
            preprocessing=(
                f"decode the image as RGB and resize it to {size}x{size} (aspect ratio not "
                f"kept, bilinear), as in training; the graph normalizes with the mean "
                f"{list(spec.mean)} and std {list(spec.std)} itself. Out of the graph: one "
                f"candidate per grid cell; keep scores > {self.nms['score_threshold']}, then a "
                f"class-aware NMS at IoU {self.nms['iou_threshold']} "
                "(torchvision.ops.batched_nms), and scale the boxes by (width / "
                f"{size}, height / {size}) to the original image."
            ),
            class_names=self.class_names,
            request="image",
        )

    def export_inputs(self, batch) -> tuple[torch.Tensor]:
        return (batch[0],)  # uint8 (B, 3, S, S)

    def read_request(self, path: Path) -> tuple[tuple[torch.Tensor], tuple[int, int]]:
        pixels, resized = self.read_pixels(path)
        return (resized,), (pixels.shape[2], pixels.shape[1])  # context: (width, height)

    def answer(self, outputs: tuple[torch.Tensor, ...], context: tuple[int, int]) -> dict:
        """One image's candidates -> {"width", "height", "objects": [{"class", "score",
        "box"}]}: NMS as in `make predict`, boxes in the image's own pixels."""
        width, height = context
        prediction = self.to_image(nms(*outputs, **self.nms), width, height)
        keep = prediction["scores"] >= self.show_threshold
        objects = [
            {
                "class": self.class_names[int(c)],
                "score": round(s, 4),
                "box": [round(v, 1) for v in box],
            }
            for box, s, c in zip(
                prediction["boxes"][keep].tolist(),
                prediction["scores"][keep].tolist(),
                prediction["labels"][keep].tolist(),
                strict=True,
            )
        ]
        return {"width": width, "height": height, "objects": objects}

    def predict_file(self, path: Path, output: Path | None = None) -> str:
        """Detect objects in one image file: write `<name>_pred.png` beside it (or `output`) with
        the boxes drawn at the image's own size; return one line per box."""
        from PIL import Image

        output = self.output_path(path, output)
        pixels, resized = self.read_pixels(path)
        images = Normalizer(self.data_spec.mean, self.data_spec.std)(resized[None].to(self.device))
        prediction = self.predict(self(images))[0]
        prediction = self.to_image(prediction, pixels.shape[2], pixels.shape[1])
        drawn = self.draw(pixels, prediction)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(output)
        keep = prediction["scores"] >= self.show_threshold
        lines = [
            f"{self.class_names[int(c)]:<12} {s:.2f}  " + " ".join(f"{v:.0f}" for v in box.tolist())
            for box, s, c in zip(
                prediction["boxes"][keep],
                prediction["scores"][keep],
                prediction["labels"][keep],
                strict=True,
            )
        ]
        header = f"{len(lines)} objects (score >= {self.show_threshold}), boxes x1 y1 x2 y2:"
        return "\n".join([header, *lines, f"wrote {output}"])


class PixelsToCandidates(nn.Module):
    """uint8 images (B, 3, S, S) -> the detector's candidates, one per grid cell: boxes
    (B, N, 4), scores (B, N), labels (B, N). Normalization and box decoding are inside, so a
    caller sends pixels and gets pixels back; NMS is left out (its output size depends on the
    data, and every runtime has its own)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.normalized, self.stride = NormalizedNet(net, mean, std, 3), net.stride

    def forward(self, pixels: torch.Tensor):
        return candidates(self.normalized(pixels), self.stride)
