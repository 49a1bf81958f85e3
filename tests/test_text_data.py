"""Text data: tokenizer, padding, length bucketing, the CSV datamodule, and the sentiment
project's synthetic and IMDB datamodules."""

import csv

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import BatchSampler, DistributedSampler

from common.data import text
from common.data.loaders import BucketBatchSampler, EpochRandomSampler
from common.data.text import (
    TextCSVDataModule,
    TextDataset,
    collate,
    encode,
    load_or_train_tokenizer,
    tokenizer_path,
    train_tokenizer,
)
from common.errors import UserError
from projects.sentiment.data import (
    IMDBDataModule,
    SyntheticSentiment,
    sentiment_label,
    synthetic_sentences,
)
from tests.conftest import make_config

CSV = dict(vocab_size=300, max_length=32, batch_size=16)  # small settings for file datamodules
SMALL = dict(synthetic_size=(400, 100), **CSV)


def test_tokenizer_round_trip_and_cls_first():
    texts, _ = synthetic_sentences(300, seed=0)
    tok = train_tokenizer(texts, vocab_size=300)
    ids = encode(tok, ["The Movie was NOT good", "the plot"], max_length=64)
    assert all(seq[0] == tok.token_to_id("[CLS]") for seq in ids)
    assert tok.token_to_id("[PAD]") == 0
    assert tok.decode(ids[0]) == "the movie was not good"
    assert max(max(seq) for seq in ids) < 300
    long = encode(tok, [" ".join(["good"] * 100)], max_length=10)
    assert len(long[0]) == 10


def test_saved_tokenizer_reused_and_new_for_new_texts(tmp_path, monkeypatch):
    texts, _ = synthetic_sentences(200, seed=0)
    path = tokenizer_path(tmp_path, "t", texts, 200)
    first = load_or_train_tokenizer(path, texts, 200)
    assert path.is_file() and path.parent.name == "tokenizers"

    def fail(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(text, "train_tokenizer", fail)
    again = load_or_train_tokenizer(path, texts, 200)
    assert again.get_vocab() == first.get_vocab()
    other = tokenizer_path(tmp_path, "t", texts[:-1], 200)
    assert other != path and other != tokenizer_path(tmp_path, "t", texts, 300)
    # A datamodule set up twice on the same data trains no tokenizer the second time.
    monkeypatch.undo()
    SyntheticSentiment(str(tmp_path), **SMALL).setup("fit")
    monkeypatch.setattr(text, "train_tokenizer", fail)
    dm = SyntheticSentiment(str(tmp_path), **SMALL)
    dm.setup("fit")
    assert dm.tokenizer is not None


def test_under_ddp_only_rank_0_trains_the_tokenizer(tmp_path, monkeypatch):
    """WordPiece training is not deterministic, so ranks training their own would disagree on
    token ids: rank 1 takes rank 0's tokenizer from the broadcast and trains none."""
    from types import SimpleNamespace

    rank0 = SyntheticSentiment(str(tmp_path / "node0"), **SMALL)
    rank0.setup("fit")
    shared = rank0.tokenizer.to_str()

    def fail(*args, **kwargs):
        raise AssertionError("rank 1 trained a tokenizer")

    monkeypatch.setattr(text, "train_tokenizer", fail)
    strategy = SimpleNamespace(broadcast=lambda obj, src: shared)  # what rank 0 sends
    rank1 = SyntheticSentiment(str(tmp_path / "node1"), **SMALL)  # a folder with no tokenizer
    rank1.trainer = SimpleNamespace(global_rank=1, world_size=2, strategy=strategy)
    rank1.setup("fit")
    assert rank1.tokenizer.to_str() == shared


def test_collate_pads_dynamically():
    batch = [(torch.tensor([2, 5, 6]), torch.tensor(1)), (torch.tensor([2, 7]), torch.tensor(0))]
    tokens, lengths, labels = collate(batch)
    assert tokens.tolist() == [[2, 5, 6], [2, 7, 0]]
    assert lengths.tolist() == [3, 2] and labels.tolist() == [1, 0]
    assert tokens.dtype == lengths.dtype == labels.dtype == torch.int64


def _lengths_dataset(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 60, (n,), generator=g).tolist()
    return TextDataset([[2] * n_ for n_ in lengths], [0] * n), lengths


def _padding(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_bucketing_covers_epoch_pads_less_and_reshuffles():
    ds, lengths = _lengths_dataset()
    sampler = BucketBatchSampler(
        EpochRandomSampler(ds, seed=1), 32, lengths=lengths, chunk_batches=10, seed=1
    )
    epoch0, epoch1 = list(sampler), list(sampler)
    assert len(sampler) == len(epoch0) == 32
    for batches in (epoch0, epoch1):
        assert sorted(i for b in batches for i in b) == list(range(len(ds)))
        assert all(len(b) == 32 for b in batches[:-1])
    assert epoch0 != epoch1
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    random_batches = list(BatchSampler(EpochRandomSampler(ds, seed=1), 32, False))
    assert _padding(epoch0, lengths) < _padding(random_batches, lengths) / 3


def test_bucketing_ddp_shards_disjoint():
    ds, lengths = _lengths_dataset(n=200)
    shards = []
    for rank in range(2):
        inner = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        shards.append({i for b in BucketBatchSampler(inner, 8, lengths=lengths) for i in b})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 200


def test_lightning_can_inject_a_distributed_sampler(tmp_path):
    """Under DDP Lightning re-creates the batch sampler around its DistributedSampler."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
    from torch.utils.data import DataLoader

    dm = SyntheticSentiment(str(tmp_path), **SMALL)
    dm.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    assert _is_dataloader_shuffled(loader)
    seen = []
    for rank in range(2):
        dist = DistributedSampler(dm.train_set, num_replicas=2, rank=rank, shuffle=True)
        new = _update_dataloader(loader, dist)
        assert (
            isinstance(new.batch_sampler, BucketBatchSampler) and new.batch_sampler.sampler is dist
        )
        _set_sampler_epoch(new, 1)
        assert dist.epoch == 1
        seen.append({i for b in new.batch_sampler for i in b})
    assert len(seen[0] | seen[1]) == len(dm.train_set)


def test_sentiment_rule_and_synthetic_data(tmp_path):
    assert sentiment_label("the movie was good") == 1
    assert sentiment_label("the movie was not good") == 0
    assert sentiment_label("the plot was never really bad") == 1
    assert sentiment_label("the acting was dull but the film was great and the cast is superb") == 1
    assert sentiment_label("the film is hardly great and the plot is not superb but x is good") == 0
    texts, labels = synthetic_sentences(500, seed=7)
    assert (texts, labels) == synthetic_sentences(500, seed=7)
    assert texts != synthetic_sentences(500, seed=8)[0]
    assert labels == [sentiment_label(t) for t in texts] and 150 < sum(labels) < 350
    assert any(w in t.split() for t in texts for w in ("not", "never", "hardly"))

    dm = SyntheticSentiment(str(tmp_path), **SMALL)
    dm.setup("fit")
    assert len(dm.train_set) == 360 and len(dm.val_set) == 40 and len(dm.test_set) == 100
    assert dm.class_names == ["negative", "positive"] and dm.num_classes == 2
    for tokens, lengths, labels in dm.train_dataloader():
        assert tokens.shape == (len(labels), int(lengths.max()))
        assert (tokens[:, 0] == dm.tokenizer.token_to_id("[CLS]")).all()
        assert (tokens < dm.vocab_size).all() and (lengths <= dm.max_length).all()
        pad = torch.arange(tokens.shape[1]) >= lengths[:, None]
        assert (tokens[pad] == 0).all() and (tokens[~pad] != 0).all()
    tokens, lengths, labels = next(iter(dm.val_dataloader()))
    assert len(labels) == 16


def _write(path, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerows(rows)


def _review_rows(n=120, header=("text", "label")):
    texts, labels = synthetic_sentences(n, seed=1)
    return [header] + [[t, ["bad", "good"][y]] for t, y in zip(texts, labels, strict=True)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_datamodule_string_labels(tmp_path, suffix):
    file = tmp_path / f"reviews{suffix}"
    _write(file, _review_rows(), "\t" if suffix == ".tsv" else ",")
    dm = TextCSVDataModule(str(tmp_path / "data"), path=str(file), **CSV)
    dm.setup("fit")
    assert dm.class_names == ["bad", "good"]
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 120
    assert len(dm.test_set) == 12
    tokens, lengths, labels = next(iter(dm.train_dataloader()))
    assert set(labels.tolist()) <= {0, 1} and tokens.dtype == torch.int64


def test_csv_int_labels_and_test_path(tmp_path):
    texts, labels = synthetic_sentences(60, seed=2)
    _write(
        tmp_path / "a.csv", [["review", "y"]] + [[t, y] for t, y in zip(texts, labels, strict=True)]
    )
    _write(
        tmp_path / "b.csv",
        [["review", "y"]] + [[t, y] for t, y in zip(texts[:10], labels[:10], strict=True)],
    )
    dm = TextCSVDataModule(
        str(tmp_path), path=str(tmp_path / "a.csv"), test_path=str(tmp_path / "b.csv"),
        text_column="review", label_column="y", **CSV,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.class_names == ["0", "1"] and len(dm.test_set) == 10
    assert dm.test_set.labels.tolist() == labels[:10]


def test_csv_errors(tmp_path):
    with pytest.raises(UserError, match="data.path"):
        TextCSVDataModule(str(tmp_path))
    with pytest.raises(UserError, match="no such file"):
        TextCSVDataModule(str(tmp_path), path=str(tmp_path / "nope.csv")).setup()
    _write(tmp_path / "cols.csv", _review_rows(header=("review", "sentiment")))
    with pytest.raises(UserError, match=r"\['review', 'sentiment'\].*'text' and 'label'"):
        TextCSVDataModule(str(tmp_path), path=str(tmp_path / "cols.csv")).setup()
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me,x\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.csv .* is not UTF-8 text"):
        TextCSVDataModule(str(tmp_path), path=str(tmp_path / "latin1.csv")).setup()
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty.csv"):
        TextCSVDataModule(str(tmp_path), path=str(tmp_path / "empty.csv")).setup()
    _write(tmp_path / "one.csv", [["text", "label"], ["a", "x"], ["b", "x"]])
    with pytest.raises(UserError, match="at least 2"):
        TextCSVDataModule(str(tmp_path), path=str(tmp_path / "one.csv")).setup()
    _write(tmp_path / "three.csv", [["text", "label"], ["a", "x"], ["b", "y"], ["c", "z"]])
    with pytest.raises(UserError, match="num_classes=3"):
        TextCSVDataModule(str(tmp_path), path=str(tmp_path / "three.csv")).setup()


def _fake_imdb(root, n=6):
    for part in ("train", "test"):
        for folder, word in (("pos", "great"), ("neg", "awful")):
            d = root / "aclImdb" / part / folder
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}_7.txt").write_text(f"A {word} film.<br /><br />Number {i}.")


def test_imdb_fake_folder(tmp_path):
    _fake_imdb(tmp_path)
    dm = IMDBDataModule(str(tmp_path), download=False, **{**SMALL, "batch_size": 4})
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.test_set) == 12 and len(dm.train_set) + len(dm.val_set) == 12
    assert dm.class_names == ["negative", "positive"]
    ids = dm.test_set.ids[0].tolist()
    assert dm.tokenizer.decode(ids) == "a awful film. number 0."
    assert dm.test_set.labels.tolist() == [0] * 6 + [1] * 6
    tokens, lengths, labels = next(iter(dm.train_dataloader()))
    assert len(labels) == 4


def test_imdb_missing_is_user_error(tmp_path):
    dm = IMDBDataModule(str(tmp_path), download=False)
    with pytest.raises(UserError, match=r"aclImdb.*data.download=false.*data.synthetic=true"):
        dm.prepare_data()
    IMDBDataModule(str(tmp_path), synthetic=True).prepare_data()  # nothing needed


@pytest.mark.parametrize("option", ["sentiment_synthetic", "imdb", "text_csv"])
def test_text_configs_instantiate(tmp_path, option):
    overrides = ["project=sentiment", f"data={option}", "data.vocab_size=200"]
    if option == "text_csv":
        _write(tmp_path / "r.csv", _review_rows(300))
        overrides.append(f"data.path={tmp_path / 'r.csv'}")
    else:
        overrides.append("data.synthetic_size=[200,50]")
    if option == "imdb":
        overrides.append("data.synthetic=true")
    dm = instantiate(make_config(tmp_path, overrides).data)
    dm.prepare_data()
    dm.setup("fit")
    tokens, lengths, labels = next(iter(dm.train_dataloader()))
    assert len(tokens) == len(lengths) == len(labels) == 64
    assert dm.vocab_size == 200 and dm.num_classes == 2
    spec = dm.spec()  # what the model gets: the tokenizer as JSON, the names
    assert "WordPiece" in spec.tokenizer and len(spec.class_names) == 2


def test_text_loader_kinds(tmp_path):
    with pytest.raises(UserError, match="bucket, dataloader"):
        SyntheticSentiment(str(tmp_path), loader="device")
    plain = SyntheticSentiment(str(tmp_path), loader="dataloader", **SMALL)
    plain.setup("fit")
    assert not isinstance(plain.train_dataloader().batch_sampler, BucketBatchSampler)


def test_csv_validation_file_is_the_validation_set(tmp_path):
    """A shipped validation file validates: nothing of the training file is held out for it."""
    _write(tmp_path / "train.csv", _review_rows(100))
    _write(tmp_path / "val.csv", _review_rows(30)[:21])  # the header and 20 rows
    dm = TextCSVDataModule(
        str(tmp_path), path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "val.csv"),
        test_size=0.2, **CSV,
    )  # fmt: skip
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 20)
    _write(tmp_path / "odd.csv", [["text", "label"], ["x", "meh"]])
    odd = TextCSVDataModule(
        str(tmp_path), path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "odd.csv"), **CSV
    )
    with pytest.raises(UserError, match="odd.csv has labels not in"):
        odd.setup("fit")


def test_csv_configured_class_names_order(tmp_path):
    _write(tmp_path / "r.csv", _review_rows(40))
    dm = TextCSVDataModule(str(tmp_path), path=str(tmp_path / "r.csv"), class_names=["good", "bad"])
    dm.setup("fit")
    assert dm.class_names == ["good", "bad"]
    first = _review_rows(40)[1:]
    test_ids = dm.test_set.labels.tolist()
    assert set(test_ids) <= {0, 1} and len(first) == 40
    with pytest.raises(UserError, match="not the labels"):
        TextCSVDataModule(
            str(tmp_path), path=str(tmp_path / "r.csv"), class_names=["a", "b"]
        ).setup()
