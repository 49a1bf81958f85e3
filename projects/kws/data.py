"""The keyword spotter's data: Speech Commands, your own folders of clips, and synthetic words.

    make train PROJECT=kws data.synthetic=true                      # synthetic words, offline
    make train PROJECT=kws                                          # Speech Commands v0.02, 35 words
    make train PROJECT=kws data.num_classes=12                      # 10 words + unknown + silence
    make train PROJECT=kws data=audio_folder data.root=/path/to/clips

Every source becomes int16 clips (N, T) of one length at one sampling rate, held in memory
(`loader=device`: on the training device) and decoded once into a cache. Batches leave the
loader as (int16 (B, T), labels (B,)); `on_after_batch_transfer`, on the device, makes floats
in [-1, 1] and, while training, shifts each clip in time and mixes in background noise. The
features (log-mel spectrograms, SpecAugment) are the net's own first layers (`nets.LogMel`).
"""

import math
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from common.data.base import DataModule, Splits
from common.data.files import (
    SPLITS,
    cache_key,
    cached,
    class_dirs,
    find_layout,
    list_files,
)
from common.data.spec import DataSpec
from common.errors import UserError
from projects.kws.audio import (
    AUDIO_EXTENSIONS,
    INT16_SCALE,
    colored_noise,
    decode_clips,
    mix_noise,
    read_audio,
    time_shift,
    to_int16,
)
from projects.kws.synthetic import synthetic_speech, synthetic_words

CACHE_VERSION = 1  # bump when decoding changes, so old caches are unused
NOISE_SECONDS = 20  # of each generated noise colour, when no recordings are given


def cached_clips(
    cache: Path,
    settings: str,
    root: Path,
    files: dict,
    sample_rate: int,
    num_samples: int,
    remedy: str,
) -> dict[str, torch.Tensor | None]:
    """{split: int16 (N, num_samples) or None} for `files` ({split: `list_files` rows or None,
    paths relative to `root`}), decoded once and kept in `cache/<key>.pt` (memory-mapped when
    loaded: read as batches need it), the key hashing `settings` and every file's path, size
    and modification time. A file that cannot be read is a UserError naming it, then `remedy`."""
    expected = {s: None if rows is None else (len(rows), num_samples) for s, rows in files.items()}

    def check(clips: dict) -> None:
        shapes = {s: None if c is None else tuple(c.shape) for s, c in clips.items()}
        if shapes != expected or any(
            c.dtype != torch.int16 for c in clips.values() if c is not None
        ):
            raise ValueError(f"holds {shapes} clips, expected int16 {expected}")

    def build() -> dict:
        paths = {
            s: None if rows is None else [root / r[0] for r in rows] for s, rows in files.items()
        }
        try:
            return {
                s: None if p is None else decode_clips(p, sample_rate, num_samples)
                for s, p in paths.items()
            }
        except UserError as err:
            raise UserError(f"{err}. {remedy}") from None

    path = cache / f"{cache_key(root, settings, files)}.pt"
    return cached(path, build, check, "audio", mmap=True)


class AudioDataModule(DataModule):
    """Clips of `clip_seconds` at `sample_rate` Hz as int16 tensors, made floats and augmented
    on the training device.

    Training augmentation, per clip: a time shift of up to `time_shift_ms` either way, then
    with probability `noise_prob` a random stretch of background noise at a volume drawn from
    [0, `noise_volume`] (the recordings in `noise_dir`, the source's own, or white, pink and
    brown noise). `synthetic=True` gives `synthetic_size` (train pool, test) clips of
    `num_classes` synthetic words (`projects/kws/synthetic.py`).
    """

    name = "audio"

    def __init__(
        self,
        data_dir: str | None = None,
        num_classes: int = 12,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        synthetic_size: tuple[int, int] = (3000, 600),
        time_shift_ms: float = 100.0,
        noise_prob: float = 0.8,
        noise_volume: float = 0.1,
        noise_dir: str | None = None,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if sample_rate < 1000:
            raise UserError(f"data.sample_rate={sample_rate} Hz is too low for speech (16000)")
        if clip_seconds <= 0:
            raise UserError(f"data.clip_seconds={clip_seconds} must be positive")
        if not 0 <= noise_prob <= 1:
            raise UserError(f"data.noise_prob={noise_prob} must be in [0, 1]")
        if time_shift_ms < 0 or noise_volume < 0:
            raise UserError(
                f"data.time_shift_ms={time_shift_ms} and data.noise_volume={noise_volume} must "
                "not be negative (0: off)"
            )
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.num_samples = round(sample_rate * clip_seconds)
        self.synthetic_size = tuple(synthetic_size)
        self.max_shift = round(sample_rate * time_shift_ms / 1000)
        self.noise_prob, self.noise_volume = noise_prob, noise_volume
        self.noise_dir = Path(noise_dir).expanduser() if noise_dir else None
        if self.noise_dir is not None and not self.noise_dir.is_dir():
            raise UserError(f"data.noise_dir={noise_dir} is not a folder of noise recordings")
        self.noise: torch.Tensor | None = None  # (L,) all noise recordings end to end
        self._noise_on: dict[torch.device, torch.Tensor] = {}

    def generate(self) -> Splits:
        if self.num_classes < 2:
            raise UserError(f"data.num_classes={self.num_classes}: a classifier needs 2 or more")
        try:
            self.class_names = synthetic_words(self.num_classes)
        except ValueError as err:
            raise UserError(f"data.num_classes={self.num_classes}: {err}") from None
        n_train, n_test = self.synthetic_size
        made = [
            synthetic_speech(n, self.num_classes, self.sample_rate, self.num_samples, self.seed, s)
            for s, n in enumerate((n_train, n_test))
        ]
        train, test = (TensorDataset(to_int16(waves), labels) for waves, labels in made)
        return Splits(train, None, test)

    # --- background noise -------------------------------------------------------------------------

    def own_noise(self) -> list[torch.Tensor]:
        """The source's noise recordings (1-D floats at `sample_rate`); none by default."""
        return []

    def noise_recordings(self) -> torch.Tensor:
        """(L,): `noise_dir`'s recordings, else the source's, else generated white, pink and
        brown noise, end to end; at least one clip long."""
        if self.noise_dir is not None:
            paths = sorted(
                p for p in self.noise_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
            )
            if not paths:
                raise UserError(
                    f"data.noise_dir={self.noise_dir} holds no audio files "
                    f"({', '.join(AUDIO_EXTENSIONS)})"
                )
            parts = [read_audio(p, self.sample_rate) for p in paths]
        else:
            parts = [] if self.synthetic else self.own_noise()
        if not parts:
            gen = torch.Generator().manual_seed(self.seed)
            n = NOISE_SECONDS * self.sample_rate
            parts = [colored_noise(kind, n, gen) for kind in ("white", "pink", "brown")]
        bank = torch.cat(parts)
        if len(bank) < self.num_samples:  # short recordings: repeat them to one clip's length
            bank = bank.repeat(math.ceil(self.num_samples / len(bank)))
        return bank

    def prepare_data(self) -> None:
        """Download what is missing, then decode the files into the cache: once per node,
        before `setup` on every process (which then only loads the cache)."""
        super().prepare_data()
        if not self.synthetic:
            self.load()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.noise is None:
            self.noise = self.noise_recordings()

    # --- batches on the device --------------------------------------------------------------------

    def augment(self, waves: torch.Tensor) -> torch.Tensor:
        """Training augmentation of float clips (B, T) on their device."""
        if self.max_shift > 0:
            waves = time_shift(waves, self.max_shift)
        if self.noise_prob > 0 and self.noise_volume > 0:
            if waves.device not in self._noise_on:  # copied to the device once
                self._noise_on[waves.device] = self.noise.to(waves.device)
            bank = self._noise_on[waves.device]
            waves = mix_noise(waves, bank, self.noise_prob, self.noise_volume)
        return waves

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        waves, labels = batch
        if waves.dtype != torch.int16:
            return batch
        waves = waves.float() / INT16_SCALE  # (B, T) in [-1, 1)
        if self.trainer is not None and self.trainer.training:
            waves = self.augment(waves)
        return waves, labels

    def spec(self) -> DataSpec:
        return DataSpec(
            class_names=self.class_names,
            sample_rate=self.sample_rate,
            num_samples=self.num_samples,
        )


class SpeechCommands(AudioDataModule):
    """Speech Commands v0.02 (Warden 2018): 105,829 one-second clips of 35 words by 2,618
    speakers, with the official validation and test lists (speakers never cross splits).

    `num_classes=35`: every word. `num_classes=12`: the standard task, the ten words
    yes/no/up/down/left/right/on/off/stop/go plus `_unknown_` (a seeded sample of the other 25
    words) and `_silence_` (one-second stretches of the background-noise recordings at random
    volumes), each of those two as many as 10% of a split's ten-word clips, as TensorFlow's
    reference recipe draws them. Downloaded once (the 2.3 GB archive stays in `<data_dir>/`,
    torchaudio's choice; delete it after the first run) and unpacked into
    `<data_dir>/SpeechCommands/speech_commands_v0.02/`; decoded once into
    `<data_dir>/SpeechCommands/cache/` (3.4 GB at 16 kHz).
    """

    name = "Speech Commands"
    expected = ("validation_list.txt", "testing_list.txt", "_background_noise_/")
    alternative = "train on synthetic words with data.synthetic=true"
    TEN_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    NOISE = "_background_noise_"
    EXTRA_FRACTION = 0.1  # unknown and silence clips per ten-word clip, in the 12-class task

    def __init__(self, data_dir: str, num_classes: int = 35, **kwargs):
        super().__init__(data_dir, num_classes=num_classes, **kwargs)
        self._recordings: list[torch.Tensor] | None = None  # _background_noise_, at sample_rate
        if not self.synthetic and num_classes not in (12, 35):
            raise UserError(
                f"data.num_classes={num_classes}: Speech Commands is 35 words (35) or the "
                "standard 10 words + unknown + silence (12)"
            )

    @property
    def location(self) -> Path:
        return Path(self.data_dir) / "SpeechCommands" / "speech_commands_v0.02"

    def fetch(self) -> None:
        from torchaudio.datasets import SPEECHCOMMANDS

        SPEECHCOMMANDS(self.data_dir, download=True)  # the archive, unpacked into `location`

    def own_noise(self) -> list[torch.Tensor]:
        if self._recordings is None:  # read once: the 12 classes' silence clips use them too
            paths = sorted((self.location / self.NOISE).glob("*.wav"))
            self._recordings = [read_audio(p, self.sample_rate) for p in paths]
        return self._recordings

    def read(self) -> Splits:
        root = self.location
        words = [w for w in class_dirs(root) if w != self.NOISE]
        if self.num_classes == 12 and not set(self.TEN_WORDS) <= set(words):
            missing = sorted(set(self.TEN_WORDS) - set(words))
            raise UserError(f"{root} lacks the word folders {', '.join(missing)}")
        layout = "<word>/<speaker>_nohash_<n>.wav, one folder per word"
        rows = list_files(root, root, words, (".wav",), layout, "clips", exclude=(self.NOISE,))
        in_list = {
            name: set((root / f"{name}_list.txt").read_text().split())
            for name in ("validation", "testing")
        }
        files = {split: [] for split in SPLITS}
        for row in rows:  # row[0]: "<word>/<file>.wav", as the lists name them
            split = (
                "val"
                if row[0] in in_list["validation"]
                else "test"
                if row[0] in in_list["testing"]
                else "train"
            )
            files[split].append(row)
        settings = f"{CACHE_VERSION}|{self.sample_rate}|{self.num_samples}"
        remedy = f"Delete {root.parent} to unpack or download it again, or {self.alternative}"
        cache = root.parent / "cache"
        clips = cached_clips(
            cache, settings, root, files, self.sample_rate, self.num_samples, remedy
        )
        labels = {s: torch.tensor([row[1] for row in files[s]], dtype=torch.int64) for s in SPLITS}
        if self.num_classes == 35:
            if len(words) != 35:
                raise UserError(f"{root} has {len(words)} word folders, not Speech Commands' 35")
            self.class_names = words
            return Splits(*(TensorDataset(clips[s], labels[s]) for s in SPLITS))
        self.class_names = [*self.TEN_WORDS, "_unknown_", "_silence_"]
        return Splits(*(self._twelve(clips[s], labels[s], words, i) for i, s in enumerate(SPLITS)))

    def _twelve(
        self, clips: torch.Tensor, labels: torch.Tensor, words: list[str], split: int
    ) -> TensorDataset:
        """A split of the 35-word clips (N, T) relabelled for the 12-class task: the ten words,
        a seeded sample of the others as `_unknown_`, and `_silence_` clips cut from the noise."""
        gen = torch.Generator().manual_seed(self.seed * 10 + split)
        new = torch.tensor([self.TEN_WORDS.index(w) if w in self.TEN_WORDS else 10 for w in words])
        labels = new[labels]
        known = (labels < 10).nonzero().squeeze(1)
        others = (labels == 10).nonzero().squeeze(1)
        extra = math.ceil(self.EXTRA_FRACTION * len(known))
        unknown = others[torch.randperm(len(others), generator=gen)[:extra]]
        noise = torch.cat(self.own_noise() or [torch.zeros(self.num_samples)])
        starts = torch.randint(0, len(noise) - self.num_samples + 1, (extra, 1), generator=gen)
        volume = torch.rand(extra, 1, generator=gen)
        silence = to_int16(noise[starts + torch.arange(self.num_samples)] * volume)  # (extra, T)
        keep = torch.cat([known, unknown])
        waves = torch.cat([clips[keep], silence])
        targets = torch.cat([labels[keep], torch.full((extra,), 11)])
        return TensorDataset(waves, targets)


FOLDER_LAYOUT = (
    "<root>/<class_name>/<clip>.wav|flac|ogg|mp3|aiff, one sub-folder per class (or "
    "<root>/train/<class_name>/..., with <root>/val and/or <root>/test beside it)"
)


class AudioFolder(AudioDataModule):
    """Your own clips, one sub-folder per class: `root/<class_name>/*.wav` (FLAC, OGG, MP3 and
    AIFF too), or `root/train/<class_name>/...` with `root/val` and/or `root/test`.

    Any sampling rate is resampled to `sample_rate` and any channel count mixed to mono; each
    clip is padded with silence (centred) or cut to its loudest `clip_seconds`. Class names
    sorted alphabetically give the labels; `num_classes` must match the number of class
    folders (the config counts them). Decoded once into `<data_dir>/audio_folder/`, the key
    hashing the folder, the rate, the length and every file's path, size and mtime.
    """

    name = "audio folder"

    def __init__(self, data_dir: str, root: str | None = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        self.root = Path(root).expanduser() if root is not None else None
        if self.synthetic:
            return
        if self.root is None or not self.root.is_dir():
            problem = (
                "is not set"
                if self.root is None
                else "is not a folder"
                if self.root.exists()
                else "does not exist"
            )
            raise UserError(
                f"data.root {problem}: point it at a folder of your clips, laid out as "
                f"{FOLDER_LAYOUT}, with data.root=/path/to/folder, or use data.synthetic=true"
            )

    @property
    def location(self) -> Path:
        return self.root

    def read(self) -> Splits:
        folders = find_layout(self.root)
        classes = class_dirs(folders["train"])
        if len(classes) < 2:
            found = f"only the class folder {classes[0]!r}" if classes else "no class sub-folders"
            raise UserError(
                f"{folders['train']} has {found}; expected {FOLDER_LAYOUT}, with at least 2 "
                "classes. Set data.root=/path/to/folder, or use data.synthetic=true"
            )
        if len(classes) != self.num_classes:
            raise UserError(
                f"data.num_classes={self.num_classes} but {folders['train']} has {len(classes)} "
                "class folders; leave data.num_classes to the config, which counts them"
            )
        files = {
            split: None
            if folder is None
            else list_files(self.root, folder, classes, AUDIO_EXTENSIONS, FOLDER_LAYOUT, "clips")
            for split, folder in folders.items()
        }
        settings = f"{CACHE_VERSION}|{self.sample_rate}|{self.num_samples}"
        cache = Path(self.data_dir) / "audio_folder"
        remedy = "Fix or remove the file"
        clips = cached_clips(
            cache, settings, self.root, files, self.sample_rate, self.num_samples, remedy
        )
        self.class_names = classes
        return Splits(
            *(
                None
                if files[s] is None
                else TensorDataset(clips[s], torch.tensor([r[1] for r in files[s]]))
                for s in SPLITS
            )
        )
