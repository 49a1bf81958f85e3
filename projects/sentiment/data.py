"""The sentiment project's data: generated review sentences with negations (offline, the
default) and the IMDB movie reviews.

    make train PROJECT=sentiment                          # data=sentiment_synthetic
    make train PROJECT=sentiment data=imdb                # downloads aclImdb (80 MB)

Both follow the shared text contract (`common.data.text`): batches of (tokens (B, T), lengths
(B,), labels (B,)), a tokenizer trained on the training split.
"""

import random
from pathlib import Path

from common.data.base import Splits
from common.data.text import TextDataModule, Texts
from common.errors import UserError

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


class SyntheticSentiment(TextDataModule):
    """Generated review sentences with negations (`synthetic_sentences`), `synthetic_size` =
    (train pool, test): offline and seeded."""

    name = "synthetic"

    def __init__(self, data_dir: str, synthetic_size: tuple[int, int] = (8000, 1000), **kwargs):
        super().__init__(data_dir, **kwargs)
        if self.num_classes != 2:
            raise UserError("synthetic sentiment data has 2 classes: set data.num_classes=2")
        self.synthetic_size = tuple(synthetic_size)
        self.class_names = self.names(["negative", "positive"])

    def read(self) -> Splits:
        n_train, n_test = self.synthetic_size
        train = synthetic_sentences(n_train, self.seed, split_seed=0)
        return Splits(Texts(*train), None, Texts(*synthetic_sentences(n_test, self.seed, 1)))


IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_LAYOUT = "aclImdb/{train,test}/{pos,neg}/*.txt"


class IMDBDataModule(SyntheticSentiment):
    """The IMDB movie reviews (Maas et al., 2011): 25,000 training and 25,000 test reviews,
    positive or negative, downloaded once into `<data_dir>/aclImdb`; `synthetic=True` gives the
    generated sentences instead."""

    name = "IMDB"
    expected = (IMDB_LAYOUT,)

    def missing(self) -> list[str]:
        root = Path(self.data_dir) / "aclImdb"
        folders = [root / s / c for s in ("train", "test") for c in ("pos", "neg")]
        return [] if all(f.is_dir() and any(f.glob("*.txt")) for f in folders) else [IMDB_LAYOUT]

    def fetch(self) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(IMDB_URL, download_root=self.data_dir)

    def generate(self) -> Splits:
        return super().read()

    def _read_split(self, part: str) -> Texts:
        texts, labels = [], []
        for label, folder in ((0, "neg"), (1, "pos")):
            for file in sorted((self.location / "aclImdb" / part / folder).glob("*.txt")):
                text = file.read_text(encoding="utf-8", errors="replace")
                texts.append(text.replace("<br />", " ").replace("<br/>", " ").strip())
                labels.append(label)
        return Texts(texts, labels)

    def read(self) -> Splits:
        return Splits(self._read_split("train"), None, self._read_split("test"))
