"""Text classification data: a WordPiece tokenizer, dynamic padding, and your own CSV files.

    make train PROJECT=<name> data=text_csv data.path=/path/reviews.csv   # your own CSV or TSV

Batches are `(tokens, lengths, labels)`: int64 token ids (B, T) padded with 0 ([PAD]) to the
longest sequence of the batch, int64 lengths (B,) counting the [CLS] token every sequence starts
with, and int64 labels (B,).

The tokenizer (HF `tokenizers` WordPiece, lowercased, BERT pre-tokenizer) is trained on the
training split only and saved as `<data_dir>/tokenizers/<name>-<hash>.json`, the hash covering
its settings and the training texts, so a run with the same data reuses it and changed data makes
a new one. Texts have different lengths, so there is no single tensor to keep on the device:
the loader kinds are "bucket" (training batches of similar lengths) and "dataloader".
"""

import csv
import hashlib
import json
import re
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from common.data.base import DataModule, Splits
from common.data.files import atomic_write
from common.data.loaders import BucketBatchSampler, EpochRandomSampler
from common.data.spec import DataSpec
from common.errors import UserError

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = [PAD, UNK, CLS]  # ids 0, 1, 2
TOKENIZER_VERSION = 1  # bump when the tokenizer recipe changes, so saved ones are not reused


# --- tokenizer ---------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    """A lowercasing WordPiece tokenizer trained on `texts`: [PAD]=0, [UNK]=1, [CLS]=2, and
    "[CLS] $A" as post-processor, so every encoded sequence starts with [CLS]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A", special_tokens=[(CLS, tokenizer.token_to_id(CLS))]
    )
    return tokenizer


def tokenizer_path(data_dir: str | Path, name: str, texts: list[str], vocab_size: int) -> Path:
    """`<data_dir>/tokenizers/<name>-<hash>.json`, the hash of the settings and `texts`."""
    digest = hashlib.sha256(
        json.dumps({"version": TOKENIZER_VERSION, "vocab_size": vocab_size}).encode()
    )
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return Path(data_dir) / "tokenizers" / f"{name}-{digest.hexdigest()[:16]}.json"


def load_or_train_tokenizer(path: str | Path, texts: list[str], vocab_size: int):
    """The tokenizer saved at `path`, or one trained on `texts` and saved there (atomically:
    DDP ranks train the same tokenizer from the same texts at the same time)."""
    from tokenizers import Tokenizer

    if Path(path).is_file():
        return Tokenizer.from_file(str(path))
    tokenizer = train_tokenizer(texts, vocab_size)
    atomic_write(path, lambda tmp: tokenizer.save(str(tmp)))
    return tokenizer


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, [CLS] first, truncated to `max_length` ids in all."""
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return [e.ids for e in tokenizer.encode_batch(texts)]


# --- datasets and collate ------------------------------------------------------------------------


class Texts(Dataset):
    """Raw texts and their int labels, as a source reads them (before tokenization)."""

    def __init__(self, texts: list[str], labels: list[int]):
        if len(texts) != len(labels):
            raise ValueError("as many labels as texts needed")
        self.texts, self.labels = list(texts), list(labels)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]

    def subset(self, indices: torch.Tensor) -> "Texts":
        idx = indices.tolist()
        return Texts([self.texts[i] for i in idx], [self.labels[i] for i in idx])


class TextDataset(Dataset):
    """Encoded texts (1-D int64 tensors of different lengths) and their int64 labels."""

    def __init__(self, ids: list[list[int]] | list[torch.Tensor], labels):
        self.ids = [torch.as_tensor(x, dtype=torch.int64) for x in ids]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(self.ids) != len(self.labels):
            raise ValueError("as many labels as texts needed")
        self.lengths = [len(x) for x in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[i], self.labels[i]


def collate(batch, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(ids, label), ...] -> (tokens (B, T) padded with pad_id to the batch's longest sequence,
    lengths (B,), labels (B,)), all int64."""
    ids, labels = zip(*batch, strict=True)
    tokens = pad_sequence(list(ids), batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    return tokens, lengths, torch.stack(labels).to(torch.int64)


# --- datamodules -------------------------------------------------------------------------------


class TextDataModule(DataModule):
    """What text sources share: their `read()` gives `Texts`; a tokenizer is trained on the
    training split and encodes every split; the loaders pad per batch.

    `class_names` (optional) renames the classes the source finds, one name per class.
    """

    name = "text"
    loaders = ("bucket", "dataloader")
    collate_fn = staticmethod(collate)  # pads with 0 == [PAD]; a plain function pickles for workers

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 2,
        vocab_size: int = 8000,
        max_length: int = 256,
        class_names: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if max_length < 2:
            raise UserError(f"data.max_length={max_length} leaves no room after [CLS]")
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.configured_names = None if class_names is None else [str(c) for c in class_names]
        self.tokenizer = None

    def names(self, found: list[str]) -> list[str]:
        """The configured `class_names` (one per class found) when given, else `found`."""
        names = found if self.configured_names is None else self.configured_names
        if len(names) != len(found):
            raise UserError(f"data.class_names has {len(names)} names for {len(found)} classes")
        return list(names)

    def fit_tokenizer(self, texts: list[str]):
        """The run's tokenizer: an adopted one, or the one saved for these training texts, or one
        trained on them. HF's WordPiece training is not deterministic (two runs on the same
        texts tie-break merges differently), so under DDP only rank 0 trains and the others
        receive its tokenizer."""
        from tokenizers import Tokenizer

        if self.adopted.tokenizer is not None:
            return Tokenizer.from_str(self.adopted.tokenizer)
        trainer, tokenizer = self.trainer, None
        if trainer is None or trainer.global_rank == 0:
            name = "synthetic" if self.synthetic else self.name
            path = tokenizer_path(self.data_dir, name, texts, self.vocab_size)
            tokenizer = load_or_train_tokenizer(path, texts, self.vocab_size)
        if trainer is None or trainer.world_size == 1:
            return tokenizer
        shared = trainer.strategy.broadcast(tokenizer.to_str() if tokenizer else None, src=0)
        return Tokenizer.from_str(shared)

    def prepare_splits(self, train: Texts, val: Texts, test: Texts):
        self.tokenizer = self.fit_tokenizer(train.texts)
        encoded = {}  # test may be val itself: encoded once
        for split in (train, val, test):
            if id(split) not in encoded:
                ids = encode(self.tokenizer, split.texts, self.max_length)
                encoded[id(split)] = TextDataset(ids, split.labels)
        return encoded[id(train)], encoded[id(val)], encoded[id(test)]

    def make_loader(self, dataset: TextDataset, train: bool):
        if train and self.loader == "bucket":
            # Under DDP Lightning swaps the sampler for a shuffled DistributedSampler (seeded
            # like this run) and keeps the bucketing: each rank buckets its own shard.
            sampler = EpochRandomSampler(dataset, seed=self.seed)
            batches = BucketBatchSampler(
                sampler,
                self.batch_size_per_device,
                drop_last=self.drop_last,
                lengths=dataset.lengths,
                seed=self.seed,
            )
            return self.dataloader(dataset, train, batch_sampler=batches)
        return self.dataloader(dataset, train)

    def spec(self) -> DataSpec:
        return DataSpec(
            class_names=self.class_names,
            tokenizer=self.tokenizer.to_str(),
            max_length=self.max_length,
        )


def _int_label(value: str) -> int | None:
    return int(value) if re.fullmatch(r"\s*-?\d+\s*", value) else None


class TextCSVDataModule(TextDataModule):
    """Your own texts: CSV (or TSV) files with a text column and a label column.

        make train PROJECT=<name> data=text_csv data.path=/path/reviews.csv

    Labels are strings (class names, sorted -> ids 0..K-1) or integers 0..K-1. `val_path` and
    `test_path` are the validation and test files when the data ships them; else a seeded
    `val_size` and `test_size` of `path` stand in. A shipped validation file matters: a set whose
    training file mixes short phrases with sentences validates on easy phrases when split.
    """

    name = "csv"
    switches = {"train": "data.path", "val": "data.val_path", "test": "data.test_path"}

    def __init__(
        self,
        data_dir: str,
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        delimiter: str | None = None,
        test_size: float | int = 0.1,
        **kwargs,
    ):
        super().__init__(data_dir, test_size=test_size, **kwargs)
        if path is None:
            raise UserError(
                "data=text_csv needs a file: data.path=/path/to/file.csv (or .tsv) with columns "
                f"{text_column!r} and {label_column!r}"
            )
        self.paths = {"train": path, "val": val_path, "test": test_path}
        self.text_column, self.label_column = text_column, label_column
        self.delimiter = delimiter
        self.name = f"csv-{Path(path).stem}"

    def _read(self, split: str) -> tuple[list[str], list[str]]:
        switch, file = self.switches[split], Path(self.paths[split]).expanduser()
        if not file.is_file():
            raise UserError(f"{switch}={self.paths[split]}: no such file")
        delimiter = self.delimiter or ("\t" if file.suffix.lower() in (".tsv", ".tab") else ",")
        try:
            with open(file, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter=delimiter)
                found = reader.fieldnames or []
                missing = [c for c in (self.text_column, self.label_column) if c not in found]
                if missing:
                    raise UserError(
                        f"{file} has columns {found} (delimiter {delimiter!r}), expected "
                        f"{self.text_column!r} and {self.label_column!r}: set data.text_column / "
                        "data.label_column (or data.delimiter)"
                    )
                rows = [(r[self.text_column], r[self.label_column]) for r in reader]
        except UnicodeDecodeError as err:
            raise UserError(
                f"{file} ({switch}) is not UTF-8 text ({err}): save it as UTF-8"
            ) from err
        rows = [(t or "", (y or "").strip()) for t, y in rows if (y or "").strip()]
        if not rows:
            raise UserError(f"{file} ({switch}) has no labelled rows")
        texts, labels = zip(*rows, strict=True)
        return list(texts), list(labels)

    def read(self) -> Splits:
        rows = {split: self._read(split) for split, path in self.paths.items() if path}
        train_labels = rows["train"][1]
        every = [y for _, labels in rows.values() for y in labels]
        ints = [_int_label(y) for y in every]
        if all(i is not None for i in ints):
            if min(ints) < 0:
                raise UserError(f"{self.paths['train']}: integer labels must be 0 or more")
            self.class_names = self.names([str(i) for i in range(max(ints) + 1)])
            to_id = int
        else:
            found = sorted(set(train_labels))
            if self.configured_names is not None and sorted(self.configured_names) != found:
                raise UserError(
                    f"data.class_names={self.configured_names} are not the labels of "
                    f"{self.paths['train']}: {found[:20]}"
                )
            self.class_names = self.configured_names or found  # their order gives the ids
            ids = {name: i for i, name in enumerate(self.class_names)}
            for split, (_, labels) in rows.items():
                unknown = sorted(set(labels) - set(ids))
                if unknown:
                    raise UserError(
                        f"{self.paths[split]} has labels not in {self.paths['train']}: "
                        f"{unknown[:10]}"
                    )
            to_id = ids.__getitem__
        if len(set(train_labels)) < 2:
            raise UserError(
                f"{self.paths['train']} has {len(set(train_labels))} class in column "
                f"{self.label_column!r}; classification needs at least 2"
            )
        if len(self.class_names) != self.num_classes:
            raise UserError(
                f"{self.paths['train']} has {len(self.class_names)} classes "
                f"({self.class_names[:10]}): set data.num_classes={len(self.class_names)}"
            )
        return Splits(
            *(
                Texts(rows[s][0], [to_id(y) for y in rows[s][1]]) if s in rows else None
                for s in ("train", "val", "test")
            )
        )
