"""Sentiment classification: the shared classifier on token batches, F1, and prediction on text."""

import torch
from torchmetrics.classification import MulticlassF1Score

from common.classifier import Classifier
from common.data import DataSpec
from common.data.text import SPECIAL_TOKENS, UNK
from common.errors import UserError
from projects.sentiment.nets import PAD

CLS_ID = SPECIAL_TOKENS.index("[CLS]")


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
        self._tokenizer = None  # built from the data spec on first use

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

    def use_data(self, spec: DataSpec) -> None:
        super().use_data(spec)
        self._tokenizer = None  # another spec, maybe another tokenizer

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

    def tokenize(self, text: str) -> list[int]:
        """One text -> its token ids with the run's own tokenizer, [CLS] first, truncated to the
        training length; a text with no word the tokenizer knows (empty, say) is refused."""
        from tokenizers import Tokenizer

        spec = self.data_spec
        if spec.tokenizer is None:
            raise UserError("this checkpoint holds no tokenizer: train it with this repo's code")
        if self._tokenizer is None:  # configured before it is shared: requests run in threads
            tokenizer = Tokenizer.from_str(spec.tokenizer)
            tokenizer.enable_truncation(spec.max_length)
            self._tokenizer = tokenizer
        tokenizer = self._tokenizer
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
        return ids

    def predict_text(self, text: str) -> str:
        """The label of one text and its probability."""
        ids = self.tokenize(text)
        tokens = torch.tensor([ids], device=self.device)  # (1, T)
        lengths = torch.tensor([len(ids)])
        probs = self(tokens, lengths).softmax(dim=1)[0]  # (num_classes,)
        best = int(probs.argmax())
        names = self.data_spec.class_names or [str(i) for i in range(len(probs))]
        return f"{names[best]} (p={probs[best]:.3f})"

    def export_spec(self):
        """tokens (B, T) int64, [CLS] first, padded with 0 after each text's `lengths` (B,)
        -> logits (B, K). The tokenizer stays outside (its JSON goes beside the file)."""
        from tokenizers import Tokenizer

        from common.export import ExportSpec, Tensor

        spec = self.data_spec
        if spec.tokenizer is None:
            raise UserError("this checkpoint holds no tokenizer: train it with this repo's code")
        gen = torch.Generator().manual_seed(0)
        vocab = Tokenizer.from_str(spec.tokenizer).get_vocab_size()  # ids the tokenizer gives

        def texts(n: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            tokens = torch.randint(3, max(vocab, 4), (n, t), generator=gen)
            lengths = torch.randint(1, t + 1, (n,), generator=gen)
            lengths[0] = t  # one text fills the batch's length, as a padded batch has
            tokens[:, 0] = CLS_ID
            tokens[torch.arange(t) >= lengths[:, None]] = PAD
            return tokens, lengths

        longest = spec.max_length
        twin = self.net.exportable().eval()
        # A recurrent twin is traced one step per position: its graph takes one length.
        fixed = getattr(twin.encoder, "fixed_length", False)
        length = longest if fixed else "length"
        k = len(spec.class_names) if spec.class_names else None
        return ExportSpec(
            module=twin,
            reference=self.net,
            examples=texts(2, longest if fixed else min(16, longest)),
            inputs=[
                Tensor(
                    "tokens",
                    "int64",
                    ["batch", length],
                    "ids from the tokenizer beside this file, [CLS] first, padded with 0 after "
                    "each text" + (f" to {longest}" if fixed else ""),
                ),
                Tensor("lengths", "int64", ["batch"], "each text's real length, [CLS] counted"),
            ],
            outputs=[Tensor("logits", "float32", ["batch", k], "softmax gives probabilities")],
            preprocessing=(
                "tokenize with the WordPiece tokenizer written beside this file (lowercased, "
                f"[CLS] first, at most {longest} ids); pad with 0 to "
                + (f"{longest} ids" if fixed else "the batch's longest text")
            ),
            class_names=spec.class_names,
            request="text",
            limits={} if fixed else {"length": (3, longest)},
            resize=None if fixed else (lambda inputs: texts(len(inputs[0]), longest)),
            pad_values=(PAD, 0),
        )

    def export_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, lengths, _ = batch
        return tokens, lengths

    def read_request(self, text: str) -> tuple[tuple[torch.Tensor, torch.Tensor], None]:
        ids = self.tokenize(text)
        return (torch.tensor(ids), torch.tensor(len(ids))), None

    def export_files(self) -> dict[str, str]:
        """Files a runtime without this repo needs beside the graph: the tokenizer."""
        return {"tokenizer.json": self.data_spec.tokenizer}
