"""MNIST classifier: the shared image classifier plus a confusion matrix each validation."""

from torchmetrics.classification import MulticlassConfusionMatrix

from common.classifier import ImageClassifier
from common.figures import confusion_matrix_figure, log_figure


class MNISTClassifier(ImageClassifier):
    """Cross-entropy, accuracy and `make predict` (from `ImageClassifier`);
    `val/confusion_matrix` as a figure."""

    def __init__(
        self, net, num_classes: int, optimizer, scheduler=None, label_smoothing: float = 0.0
    ):
        super().__init__(net, num_classes, optimizer, scheduler, label_smoothing)
        self.val_confusion = MulticlassConfusionMatrix(num_classes)

    def validation_step(self, batch, batch_idx):
        preds = self.evaluate(batch, "val")
        self.val_confusion.update(preds, batch[1])

    def on_validation_epoch_end(self):
        matrix = self.val_confusion.compute()  # (K, K), synced across processes
        self.val_confusion.reset()
        if not self.trainer.sanity_checking:
            log_figure(
                self,
                "val/confusion_matrix",
                confusion_matrix_figure(matrix, self.data_spec.class_names),
            )
