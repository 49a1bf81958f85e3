"""Sentiment classification: the shared classifier on token batches, F1, and prediction on text."""

import torch
from torchmetrics.classification import MulticlassF1Score

from common.classifier import Classifier
from common.data import DataSpec
from common.data.text import UNK
from common.errors import UserError


class SentimentClassifier(Classifier):
    """Cross-entropy, accuracy (from `Classifier`) and macro F1 (`val/f1`, `test/f1`) for a net
    mapping (tokens (B, T), lengths (B,)) to logits (B, num_classes).

    The tokenizer the run trained reaches the model in its data spec, which every checkpoint
    keeps, so `make predict PROJECT=sentiment ckpt_path=... text="..."` needs no data folder.
    """

    def __init__(self, net, num_classes: int, optimizer, scheduler=None, label_smoothing=0.0):
        super().__init__(net, num_classes, optimizer, scheduler, label_smoothing)
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")

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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if (
            "tokenizer" in checkpoint
            and "data_spec" not in checkpoint
            and self.data_spec.tokenizer is None
        ):
            # Written before data specs: the tokenizer sat beside the weights, the rest in the config.
            data = checkpoint.get("config", {}).get("data", {})
            tokenizer, names = checkpoint["tokenizer"], data.get("class_names")
            self.use_data(DataSpec(names, tokenizer=tokenizer, max_length=data.get("max_length")))

    def predict_text(self, text: str) -> str:
        """The label of one text and its probability, with the run's own tokenizer; a text with
        no word the tokenizer knows (empty, say) is refused."""
        from tokenizers import Tokenizer

        spec = self.data_spec
        if spec.tokenizer is None:
            raise UserError("this checkpoint holds no tokenizer: train it with this repo's code")
        tokenizer = Tokenizer.from_str(spec.tokenizer)
        tokenizer.enable_truncation(spec.max_length)
        encoding = tokenizer.encode(text)
        ids = encoding.ids  # [CLS] first
        marks = encoding.special_tokens_mask  # 1 at [CLS]
        words = [i for i, special in zip(ids, marks, strict=True) if not special]
        if all(i == tokenizer.token_to_id(UNK) for i in words):
            # Only [CLS] and [UNK]s: whatever came out would not be about this text.
            raise UserError(
                "no word of this text is in the model's vocabulary (each reads as [UNK]): "
                "its answer would mean nothing"
            )
        tokens = torch.tensor([ids], device=self.device)  # (1, T)
        lengths = torch.tensor([len(ids)])
        probs = self(tokens, lengths).softmax(dim=1)[0]  # (num_classes,)
        best = int(probs.argmax())
        names = spec.class_names or [str(i) for i in range(len(probs))]
        return f"{names[best]} (p={probs[best]:.3f})"
