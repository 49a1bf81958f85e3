"""Text classification (sentiment): a WordPiece tokenizer, dynamic padding, length bucketing.

    make train PROJECT=<name> data=sentiment_synthetic          # offline, the default
    make train PROJECT=<name> data=imdb                         # downloads aclImdb (80 MB)
    make train PROJECT=<name> data=text_csv data.path=/path/reviews.csv   # your own CSV or TSV

Batches are `(tokens, lengths, labels)`: int64 token ids (B, T) padded with `pad_id` (0) to the
longest sequence of the batch, int64 lengths (B,) counting the [CLS] token every sequence starts
with, and int64 labels (B,).

The tokenizer (HF `tokenizers` WordPiece, lowercased, BERT pre-tokenizer) is trained on the
training split only and saved as `<data_dir>/tokenizers/<name>-<hash>.json`, the hash covering
its settings and the training texts, so a run with the same data reuses it and changed data makes
a new one. Text always goes through torch DataLoaders (`loader: device` is accepted and means the
same): samples have different lengths, so there is no single tensor to keep on the device.
"""

import csv
import hashlib
import json
import os
import random
import re
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from common.data.base import DataModule, split
from common.data.loaders import UnpaddedDistributedSampler
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
    """The tokenizer saved at `path`, or one trained on `texts` and saved there.

    Written to a temporary file and renamed, so concurrent processes (DDP ranks, which train the
    same tokenizer from the same texts) never read a half-written file.
    """
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tokenizer = train_tokenizer(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)
    return tokenizer


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, [CLS] first, truncated to `max_length` ids in all."""
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return [e.ids for e in tokenizer.encode_batch(texts)]


# --- dataset, collate, bucketing ---------------------------------------------------------------


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


class EpochRandomSampler(RandomSampler):
    """A random permutation per epoch, drawn from `seed + epoch`: runs repeat exactly.

    Lightning calls `set_epoch` before each epoch (via `batch_sampler.sampler`); used alone, the
    epoch advances after every pass. Being a RandomSampler, Lightning sees the loader as shuffled
    and, under DDP, swaps in a shuffled DistributedSampler of its own (rank's disjoint shard).
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(len(self.data_source), generator=gen).tolist())


class BucketBatchSampler(BatchSampler):
    """Batches of similar lengths, so little of each batch is padding.

    Takes the (shuffled) indices of `sampler`, sorts each chunk of `chunk_batches * batch_size`
    of them by length, cuts the chunk into batches and shuffles the order of the full batches
    (seeded by `seed` and the sampler's epoch); a last, smaller batch comes last. Every index of
    the sampler appears exactly once per epoch. Under DDP the sampler is a DistributedSampler
    (Lightning injects one through the `sampler` argument), so ranks bucket disjoint shards.
    """

    def __init__(
        self,
        sampler,
        batch_size: int,
        drop_last: bool = False,
        lengths: list[int] | None = None,
        chunk_batches: int = 50,
        seed: int = 0,
    ):
        super().__init__(sampler, batch_size, drop_last)
        if lengths is None:
            raise ValueError("BucketBatchSampler needs the samples' lengths")
        self.lengths = list(lengths)
        self.chunk_batches = chunk_batches
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)  # read before the sampler advances it
        indices = list(self.sampler)
        chunk = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(indices), chunk):
            part = sorted(indices[start : start + chunk], key=self.lengths.__getitem__)
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        rest = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        gen = torch.Generator().manual_seed(self.seed + 1_000_003 * (epoch + 1))
        for i in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[i]
        if rest is not None and not self.drop_last:
            yield rest


# --- synthetic sentiment -----------------------------------------------------------------------

POSITIVE = (
    "good great excellent wonderful brilliant enjoyable charming superb delightful moving "
    "funny beautiful"
).split()
NEGATIVE = (
    "bad terrible awful boring dull poor horrible weak disappointing predictable messy bland"
).split()
NEGATIONS = ("not", "never", "hardly")
SUBJECTS = (
    "the movie",
    "the film",
    "the acting",
    "the plot",
    "the script",
    "the cast",
    "the ending",
    "the soundtrack",
    "the director",
    "this story",
)
OPENERS = ("", "", "i think", "honestly", "overall", "in my opinion", "to be fair", "sadly")
VERBS = ("is", "was", "seemed", "felt")
INTENSIFIERS = ("", "", "really", "very", "quite")
CONNECTORS = ("and", "but", "while", "although")


def sentiment_label(words: list[str] | str) -> int:
    """The synthetic data's rule: each sentiment word counts +1 (positive) or -1 (negative), a
    negation flips the next sentiment word after it; label 1 (positive) if the sum is > 0."""
    if isinstance(words, str):
        words = words.split()
    score, negated = 0, False
    for word in words:
        if word in NEGATIONS:
            negated = True
        elif word in POSITIVE or word in NEGATIVE:
            polarity = 1 if word in POSITIVE else -1
            score += -polarity if negated else polarity
            negated = False
    return int(score > 0)


def synthetic_sentences(n: int, seed: int, split_seed: int = 0) -> tuple[list[str], list[int]]:
    """`n` seeded review-like sentences and their labels (1 positive, 0 negative).

    One or three clauses ("the plot was not really good"), so sums never tie; negations make
    word order matter: "not good" is negative and "good" positive.
    """
    rng = random.Random(f"sentiment-{seed}-{split_seed}")
    texts, labels = [], []
    for _ in range(n):
        clauses = []
        for _ in range(1 if rng.random() < 0.6 else 3):
            words = [rng.choice(SUBJECTS), rng.choice(VERBS)]
            if rng.random() < 0.4:
                words.append(rng.choice(NEGATIONS))
            words += [rng.choice(INTENSIFIERS), rng.choice(POSITIVE + NEGATIVE)]
            clauses.append(" ".join(w for w in words if w))
        text = clauses[0]
        for clause in clauses[1:]:
            text += f" {rng.choice(CONNECTORS)} {clause}"
        text = f"{rng.choice(OPENERS)} {text}".strip()
        texts.append(text)
        labels.append(sentiment_label(text))
    return texts, labels


# --- datamodules -------------------------------------------------------------------------------


class TextDataModule(DataModule):
    """The shared part: raw texts from `load_texts()`, a seeded validation split, a tokenizer
    trained on the training split, and DataLoaders that pad per batch (bucketed when training).

    `synthetic=True` uses the generated sentiment sentences of `synthetic_size` (train pool, test).
    """

    name = "text"

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 2,
        vocab_size: int = 8000,
        max_length: int = 256,
        bucket: bool = True,
        synthetic_size: tuple[int, int] = (8000, 1000),
        class_names: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if max_length < 2:
            raise UserError(f"data.max_length={max_length} leaves no room after [CLS]")
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.bucket = bucket
        self.synthetic_size = tuple(synthetic_size)
        self.pad_id = 0
        self.configured_names = None if class_names is None else [str(c) for c in class_names]
        self.class_names: list[str] = self._names(["negative", "positive"])
        self.tokenizer = None
        self.collate_fn = collate  # pads with 0 == pad_id; a plain function pickles for workers

    def _names(self, found: list[str]) -> list[str]:
        """`class_names` from the config when given (one per class), else `found`."""
        names = found if self.configured_names is None else self.configured_names
        if len(names) != len(found):
            raise UserError(f"data.class_names has {len(names)} names for {len(found)} classes")
        return list(names)

    def load_texts(self) -> tuple[list[str], list[int], list[str] | None, list[int] | None]:
        """(train pool texts, labels, test texts, labels); a None test set: test on validation."""
        raise NotImplementedError

    def _texts(self):
        if self.synthetic:
            if self.num_classes != 2:
                raise UserError("synthetic sentiment data has 2 classes: set data.num_classes=2")
            self.class_names = self._names(["negative", "positive"])
            n_train, n_test = self.synthetic_size
            return (
                *synthetic_sentences(n_train, self.seed, split_seed=0),
                *synthetic_sentences(n_test, self.seed, split_seed=1),
            )
        return self.load_texts()

    def load(self):
        raise NotImplementedError("text datamodules build their splits in setup()")

    def setup(self, stage: str | None = None) -> None:
        """Like the base's, but the tokenizer is trained between the split and the encoding, and
        nothing moves to the device (`loader: device` means DataLoaders here too)."""
        self.split_batch_over_processes()
        if self.train_set is not None:
            return
        texts, labels, test_texts, test_labels = self._texts()
        train_idx, val_idx = split(
            TensorDataset(torch.arange(len(texts))), self.val_size, self.seed
        )
        train_idx, val_idx = train_idx.tensors[0].tolist(), val_idx.tensors[0].tolist()
        train_texts = [texts[i] for i in train_idx]
        name = "synthetic" if self.synthetic else self.name
        path = tokenizer_path(self.data_dir, name, train_texts, self.vocab_size)
        self.tokenizer = load_or_train_tokenizer(path, train_texts, self.vocab_size)

        def dataset(idx: list[int], texts=texts, labels=labels) -> TextDataset:
            ids = encode(self.tokenizer, [texts[i] for i in idx], self.max_length)
            return TextDataset(ids, [labels[i] for i in idx])

        self.train_set, self.val_set = dataset(train_idx), dataset(val_idx)
        if test_texts is None:
            self.test_set = self.val_set
        else:
            self.test_set = dataset(list(range(len(test_texts))), test_texts, test_labels)

    def resident(self, dataset: Dataset) -> Dataset | None:
        return None  # variable-length samples: never held on the device as one tensor

    def device_loader(self, dataset: Dataset, train: bool, rank: int, world: int):
        return None

    def _loader(self, dataset: TextDataset, train: bool):
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        common = dict(
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )
        if train and self.bucket:
            # Under DDP Lightning swaps the sampler for a shuffled DistributedSampler (seeded
            # like this run) and keeps the bucketing: each rank buckets its own shard.
            sampler = EpochRandomSampler(dataset, seed=self.seed)
            batches = BucketBatchSampler(
                sampler, self.batch_size_per_device, lengths=dataset.lengths, seed=self.seed
            )
            return DataLoader(dataset, batch_sampler=batches, **common)
        sampler = (
            UnpaddedDistributedSampler(dataset, world, rank) if world > 1 and not train else None
        )
        return DataLoader(
            dataset, batch_size=self.batch_size_per_device, shuffle=train, sampler=sampler, **common
        )


class SentimentSyntheticDataModule(TextDataModule):
    """Generated review sentences with negations (`synthetic_sentences`): offline, seeded."""

    name = "synthetic"

    def __init__(self, data_dir: str, **kwargs):
        kwargs["synthetic"] = True
        super().__init__(data_dir, **kwargs)


def _int_label(value: str) -> int | None:
    return int(value) if re.fullmatch(r"\s*-?\d+\s*", value) else None


class TextCSVDataModule(TextDataModule):
    """Your own texts: a CSV (or TSV) with a text column and a label column.

        make train PROJECT=<name> data=text_csv data.path=/path/reviews.csv

    Labels are strings (class names, sorted -> ids 0..K-1) or integers 0..K-1. The test set is
    `test_path` if given, else a seeded `test_size` split of `path`.
    """

    name = "csv"

    def __init__(
        self,
        data_dir: str,
        path: str | None = None,
        test_path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        delimiter: str | None = None,
        test_size: float | int = 0.1,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if path is None and not self.synthetic:
            raise UserError(
                "data=text_csv needs a file: data.path=/path/to/file.csv (or .tsv) with columns "
                f"{text_column!r} and {label_column!r}, or use data.synthetic=true"
            )
        self.path, self.test_path = path, test_path
        self.text_column, self.label_column = text_column, label_column
        self.delimiter, self.test_size = delimiter, test_size
        if path is not None:
            self.name = f"csv-{Path(path).stem}"

    def _read(self, path: str, switch: str) -> tuple[list[str], list[str]]:
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"{switch}={path}: no such file")
        delimiter = self.delimiter or ("\t" if file.suffix.lower() in (".tsv", ".tab") else ",")
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
        rows = [(t or "", (y or "").strip()) for t, y in rows if (y or "").strip()]
        if not rows:
            raise UserError(f"{file} ({switch}) has no labelled rows")
        texts, labels = zip(*rows, strict=True)
        return list(texts), list(labels)

    def load_texts(self):
        texts, raw = self._read(self.path, "data.path")
        test_texts, test_raw = (
            self._read(self.test_path, "data.test_path") if self.test_path else (None, None)
        )
        ints = [_int_label(y) for y in raw + (test_raw or [])]
        if all(i is not None for i in ints):
            if min(ints) < 0:
                raise UserError(f"{self.path}: integer labels must be 0 or more")
            self.class_names = [str(i) for i in range(max(ints) + 1)]
            if self.configured_names is not None and len(self.configured_names) == max(ints) + 1:
                self.class_names = self.configured_names
            to_id = int
        else:
            self.class_names = sorted(set(raw))
            if self.configured_names is not None:
                if sorted(self.configured_names) != self.class_names:
                    raise UserError(
                        f"data.class_names={self.configured_names} are not the labels of "
                        f"{self.path}: {self.class_names[:20]}"
                    )
                self.class_names = self.configured_names  # their order gives the ids
            ids = {name: i for i, name in enumerate(self.class_names)}
            unknown = sorted(set(test_raw or []) - set(ids))
            if unknown:
                raise UserError(f"{self.test_path} has labels not in {self.path}: {unknown[:10]}")
            to_id = ids.__getitem__
        if len(set(raw)) < 2:
            raise UserError(
                f"{self.path} has {len(set(raw))} class in column {self.label_column!r}; "
                "classification needs at least 2"
            )
        if len(self.class_names) != self.num_classes:
            raise UserError(
                f"{self.path} has {len(self.class_names)} classes ({self.class_names[:10]}): "
                f"set data.num_classes={len(self.class_names)}"
            )
        labels = [to_id(y) for y in raw]
        if test_texts is not None:
            return texts, labels, test_texts, [to_id(y) for y in test_raw]
        pool, test = split(TensorDataset(torch.arange(len(texts))), self.test_size, self.seed + 1)
        pool, test = pool.tensors[0].tolist(), test.tensors[0].tolist()
        return (
            [texts[i] for i in pool],
            [labels[i] for i in pool],
            [texts[i] for i in test],
            [labels[i] for i in test],
        )


IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_LAYOUT = "aclImdb/{train,test}/{pos,neg}/*.txt"


class IMDBDataModule(TextDataModule):
    """The IMDB movie reviews (Maas et al., 2011): 25,000 training and 25,000 test reviews,
    positive or negative, downloaded once into `<data_dir>/aclImdb`."""

    name = "imdb"

    def __init__(self, data_dir: str, download: bool = True, **kwargs):
        super().__init__(data_dir, **kwargs)
        self.download = download

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / "aclImdb"

    def _missing(self) -> bool:
        folders = [self.raw_dir / s / c for s in ("train", "test") for c in ("pos", "neg")]
        return not all(f.is_dir() and any(f.glob("*.txt")) for f in folders)

    def fetch(self) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(IMDB_URL, download_root=self.data_dir)

    def missing_help(self) -> tuple[str, str]:
        return (
            f"IMDB files missing in {self.raw_dir} (expected {IMDB_LAYOUT} under {self.data_dir})",
            "Put the extracted archive there, or train on synthetic sentences with "
            "data.synthetic=true",
        )

    def _read_split(self, part: str) -> tuple[list[str], list[int]]:
        texts, labels = [], []
        for label, folder in ((0, "neg"), (1, "pos")):
            for file in sorted((self.raw_dir / part / folder).glob("*.txt")):
                text = file.read_text(encoding="utf-8", errors="replace")
                texts.append(text.replace("<br />", " ").replace("<br/>", " ").strip())
                labels.append(label)
        return texts, labels

    def load_texts(self):
        if self._missing():
            self.prepare_data()  # raises the readable error when the files cannot be had
        if self.num_classes != 2:
            raise UserError("IMDB has 2 classes: set data.num_classes=2")
        return (*self._read_split("train"), *self._read_split("test"))
