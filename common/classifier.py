"""What every classifier shares: the loss, metrics that stay exact under DDP, and prediction on
a file (`FileClassifier`: a project reads its file, the top-k answer is printed the same way;
`ImageClassifier` reads images)."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from common.data.images import NormalizedNet, Normalizer, read_image
from common.errors import UserError
from common.module import TemplateModule


class Classifier(TemplateModule):
    """Wraps a net mapping inputs (B, ...) to logits (B, num_classes).

    Logs `train/loss`, `val/loss`, `val/acc`, `test/loss`, `test/acc`. Losses and accuracies are
    torchmetrics objects: they sum over batches and processes, so epoch values under DDP equal
    the single-process ones exactly. Projects subclass it to add figures or model tweaks.
    `compile`: torch.compile the net at setup (its first steps compile; it pays off on long
    runs: README, "Speed").
    """

    top_k = 5  # the classes `make predict` and `make serve` answer with

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.0,
        compile: bool = False,
    ):
        super().__init__(optimizer, scheduler)
        # Primitives only: nets and optimizer partials stay out of the checkpoint's hparams, so
        # it loads with torch's weights_only=True.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.label_smoothing = label_smoothing
        self.compile_net = compile
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        # average="micro": the plain fraction of correct predictions.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.compile_net:
            # In place (nn.Module.compile), so state_dict keys and checkpoints stay the same.
            self.net.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def unpack(self, batch) -> tuple[tuple, torch.Tensor]:
        """(inputs to forward, targets) of a batch; text batches carry lengths too."""
        x, y = batch
        return (x,), y

    def eval_logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits for validation and test; subclasses add test-time augmentation here."""
        return self(*inputs)

    def training_step(self, batch, batch_idx):
        inputs, y = self.unpack(batch)
        loss = F.cross_entropy(self(*inputs), y, label_smoothing=self.label_smoothing)
        if self.logs_this_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluate(self, batch, stage: str) -> torch.Tensor:
        """Update `stage`'s loss and accuracy (unsmoothed loss); return the predictions (B,)."""
        inputs, y = self.unpack(batch)
        logits = self.eval_logits(*inputs)
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss.update(F.cross_entropy(logits, y), weight=len(y))
        preds = logits.argmax(dim=1)
        acc(preds, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc, prog_bar=stage == "val")
        return preds

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, "val")

    def answer(self, outputs: tuple[torch.Tensor, ...], context=None) -> dict:
        """One input's logits (K,) -> {"classes": the `top_k` [{name, probability}], best first}."""
        return {"classes": class_probabilities(outputs[0], self.data_spec.class_names, self.top_k)}

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")


class FileClassifier(Classifier):
    """A `Classifier` that can `make predict input=<file>`: the file made into one input as the
    training data was (`read_input`, the subclass's), then the `top_k` classes."""

    def output_path(self, path: Path, output: Path | None = None) -> None:
        """None: a classifier prints its answer and writes no file."""
        if output is not None:
            raise UserError("output= is for projects that write a file; a classifier prints")
        return None

    def read_input(self, path: Path) -> torch.Tensor:
        """One file -> a batch of one input (1, ...) on the model's device; unreadable input is
        a UserError."""
        raise NotImplementedError

    def predict_file(self, path: Path, output: Path | None = None) -> str:
        """The `top_k` classes with their probabilities (test-time augmentation included)."""
        self.output_path(path, output)
        probs = self.eval_logits(self.read_input(path)).float().softmax(dim=1)[0]  # (K,)
        return top_classes(path, probs, self.data_spec.class_names, self.top_k)


class ImageClassifier(FileClassifier):
    """A `Classifier` of images that can `make predict input=<image>`: the top-5 classes."""

    def read_input(self, path: Path) -> torch.Tensor:
        """The image resized, cropped and normalized as the training images were: (1, C, S, S)."""
        spec = self.data_spec
        if spec.image_size is None:
            raise UserError("this checkpoint holds no data description: train it with this repo")
        pixels = read_image(path, spec.image_size, spec.in_chans)  # uint8 (C, S, S)
        return Normalizer(spec.mean, spec.std)(pixels[None].to(self.device))

    def export_spec(self):
        """The net behind its normalization: uint8 pixels (B, C, S, S) -> logits (B, K)."""
        from common.export import ExportSpec, Tensor

        spec = self.data_spec
        if spec.image_size is None:
            raise UserError("this checkpoint holds no data description: train it with this repo")
        c, size = spec.in_chans, spec.image_size
        module = NormalizedNet(self.net, spec.mean, spec.std, c).to(self.device).eval()
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (2, c, size, size), generator=gen, dtype=torch.uint8)
        k = len(spec.class_names) if spec.class_names else None
        return ExportSpec(
            module=module,
            examples=(pixels,),
            inputs=[Tensor("pixels", "uint8", ["batch", c, size, size], "RGB or grey, 0-255")],
            outputs=[Tensor("logits", "float32", ["batch", k], "softmax gives probabilities")],
            preprocessing=(
                f"decode the image, resize its shorter side to {size} and center-crop "
                f"{size}x{size} (as `make predict` does), {'grey' if c == 1 else 'RGB'}; the "
                f"graph normalizes with the training data's mean {list(spec.mean)} and std "
                f"{list(spec.std)} itself. No test-time augmentation."
            ),
            class_names=spec.class_names,
            request="image",
        )

    def export_inputs(self, batch) -> tuple[torch.Tensor]:
        """A raw validation batch (uint8 images, labels) -> the exported graph's inputs."""
        images = batch[0]
        return (images[:, None] if images.ndim == 3 else images,)  # (B, C, S, S)

    def read_request(self, path: Path) -> tuple[tuple[torch.Tensor], None]:
        """One uploaded image -> the graph's inputs for it, uint8 (C, S, S)."""
        spec = self.data_spec
        return (read_image(path, spec.image_size, spec.in_chans),), None


def ranked(probs: torch.Tensor, class_names: list[str] | None, k: int) -> list[tuple[str, float]]:
    """One input's probabilities (K,) -> the k most probable (name, probability), best first."""
    top = probs.topk(min(k, len(probs)))
    names = class_names or [str(i) for i in range(len(probs))]
    return [(names[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]


def top_classes(what, probs: torch.Tensor, class_names: list[str] | None, k: int = 5) -> str:
    """`what: top k of K classes` and one line per class, most probable first, for one input's
    probabilities (K,)."""
    best = ranked(probs, class_names, k)
    width = max(len(name) for name, _ in best)
    lines = [f"  {name:<{width}}  {p:6.1%}" for name, p in best]
    return "\n".join([f"{what}: top {len(lines)} of {len(probs)} classes", *lines])


def class_probabilities(logits: torch.Tensor, class_names: list[str] | None, k: int) -> list[dict]:
    """Logits (K,) -> the k most probable classes [{"name", "probability"}], best first."""
    best = ranked(logits.float().softmax(dim=0), class_names, k)
    return [{"name": name, "probability": round(p, 6)} for name, p in best]
