"""Sentiment classification: the shared classifier on token batches, F1, and prediction on text."""

import torch
from torchmetrics.classification import MulticlassF1Score

from common.classifier import Classifier


class SentimentClassifier(Classifier):
    """Cross-entropy, accuracy (from `Classifier`) and macro F1 (`val/f1`, `test/f1`) for a net
    mapping (tokens (B, T), lengths (B,)) to logits (B, num_classes).

    The tokenizer the run trained is stored in every checkpoint (as its JSON text), so
    `make predict PROJECT=sentiment ckpt_path=... text="..."` needs no data folder.
    """

    def __init__(
        self,
        net,
        num_classes: int,
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
    ):
        super().__init__(net, num_classes, optimizer, scheduler, label_smoothing)
        self.class_names = [str(c) for c in (class_names or range(num_classes))]
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self.tokenizer_json: str | None = None

    def unpack(self, batch):
        tokens, lengths, labels = batch
        return (tokens, lengths), labels

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(tokens, lengths)

    def evaluate(self, batch, stage: str) -> torch.Tensor:
        preds = super().evaluate(batch, stage)
        f1 = getattr(self, f"{stage}_f1")
        f1(preds, batch[2])
        self.log(f"{stage}/f1", f1)
        return preds

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.tokenizer_json = tokenizer.to_str()
        if self.tokenizer_json is not None:
            checkpoint["tokenizer"] = self.tokenizer_json  # a str: safe for weights_only loading

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer_json = checkpoint.get("tokenizer")

    def predict_text(self, text: str, datamodule) -> str:
        """The label of one text and its probability, with the checkpoint's own tokenizer."""
        from tokenizers import Tokenizer

        from common.errors import UserError

        if self.tokenizer_json is None:
            raise UserError("this checkpoint holds no tokenizer: train it with this repo's code")
        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        tokenizer.enable_truncation(datamodule.max_length)
        ids = tokenizer.encode(text).ids
        tokens = torch.tensor([ids], device=self.device)  # (1, T)
        lengths = torch.tensor([len(ids)])
        probs = self(tokens, lengths).softmax(dim=1)[0]  # (num_classes,)
        best = int(probs.argmax())
        return f"{self.class_names[best]} (p={probs[best]:.3f})"
