"""Audio features for training: batch-wise on the device (the kws project's way) versus per clip
in DataLoader workers (the usual torchaudio recipe).

One epoch of one-second 16 kHz clips, stored as int16, becomes what the res8 net's convolutions
take: augmented log-mel spectrograms (B, 1, 40, 101) on the training device. Augmentation as
the kws recipe: a time shift of up to 100 ms, background noise (probability 0.8, volume up to
0.1), 40 mel bands of 30 ms windows every 10 ms in dB, then SpecAugment (two frequency masks
of fewer than 5 bands, two time masks of fewer than 10 frames). Three ways:

- per clip: a Dataset whose `__getitem__` does all of it for one clip with torchaudio's
  transforms, a DataLoader with 0 or 2 worker processes (one thread each) collating them;
- `data.loader=dataloader`: a DataLoader over the int16 tensors, then the batch on the device
  through `AudioDataModule.augment` and the `LogMel` front end's transforms;
- `data.loader=device`: the int16 tensors held on the device, one index op per batch, then the
  same batch-wise path.

Run: `make bench` or `python -m benchmarks.audio [--clips N] [--device cuda]`.
"""

import argparse

import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset

from benchmarks.loaders import time_epoch
from projects.kws.audio import INT16_SCALE
from projects.kws.data import AudioDataModule
from projects.kws.nets import MelDB, SpecAugment

SAMPLE_RATE = 16000
MAX_SHIFT = 1600  # 100 ms
NOISE_PROB, NOISE_VOLUME = 0.8, 0.1
FREQ_MASK, TIME_MASK, NUM_MASKS = 5, 10, 2


class PerClipFeatures(Dataset):
    """int16 clips (N, T) -> one augmented log-mel spectrogram (1, 40, 101) per `__getitem__`."""

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor):
        self.clips, self.labels, self.noise = clips, labels, noise
        self.mel = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=512, win_length=480, hop_length=160, f_min=20.0, n_mels=40
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=80.0)
        self.masks = [
            torchaudio.transforms.FrequencyMasking(FREQ_MASK),
            torchaudio.transforms.TimeMasking(TIME_MASK),
        ] * NUM_MASKS

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        wave = self.clips[i].float() / INT16_SCALE  # (T,)
        shift = int(torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, ()))
        wave = torch.roll(wave, shift)
        if shift > 0:
            wave[:shift] = 0
        elif shift < 0:
            wave[shift:] = 0
        if torch.rand(()) < NOISE_PROB:
            start = int(torch.randint(0, len(self.noise) - len(wave) + 1, ()))
            volume = float(torch.rand(())) * NOISE_VOLUME
            wave = (wave + volume * self.noise[start : start + len(wave)]).clamp(-1, 1)
        spec = self.to_db(self.mel(wave[None]))  # (1, 40, 101)
        for mask in self.masks:
            spec = mask(spec)
        return spec, self.labels[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    # The features cost the same whatever the sound: noise stands in for speech here.
    clips = (0.1 * torch.randn(args.clips, SAMPLE_RATE) * INT16_SCALE).to(torch.int16)
    labels = torch.randint(0, 12, (args.clips,))
    dm = AudioDataModule(
        None,
        batch_size=args.batch_size,
        time_shift_ms=100,
        noise_prob=NOISE_PROB,
        noise_volume=NOISE_VOLUME,
        synthetic=True,
    )
    dm.noise = dm.noise_recordings()  # white, pink and brown, 20 s each
    to_mel = MelDB(SAMPLE_RATE).to(device)
    spec_augment = SpecAugment(FREQ_MASK, TIME_MASK, NUM_MASKS).train().to(device)

    def on_device(batch) -> torch.Tensor:
        waves = batch[0].to(device, non_blocking=True).float() / INT16_SCALE
        return spec_augment(to_mel(dm.augment(waves)))

    rows = []
    per_clip = PerClipFeatures(clips, labels, dm.noise)
    for workers in (0, 2):
        loader = DataLoader(
            per_clip,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        label = f"per clip in the Dataset, {workers} workers"
        rows.append((label, *time_epoch(loader, lambda b: b[0].to(device), device)))
    dm.train_set = torch.utils.data.TensorDataset(clips, labels)
    dm.loader = "dataloader"
    rows.append(
        (
            "data.loader=dataloader, batch-wise",
            *time_epoch(dm.train_dataloader(), on_device, device),
        )
    )
    dm.loader = "device"
    dm.train_set = torch.utils.data.TensorDataset(clips.to(device), labels.to(device))
    rows.append(
        ("data.loader=device, batch-wise", *time_epoch(dm.train_dataloader(), on_device, device))
    )

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print(
        f"\none epoch of {args.clips} one-second 16 kHz clips, batch {args.batch_size}, to "
        f"augmented log-mel spectrograms (B, 1, 40, 101) on {name} ({threads} threads in the "
        "main process, 1 per worker)"
    )
    print(f"{'path':<42}{'clips/s':>10}{'epoch s':>10}")
    for label, seconds, n in rows:
        print(f"{label:<42}{n / seconds:10.0f}{seconds:10.2f}")
    best_per_clip = min(rows[0][1], rows[1][1])
    print(
        f"batch-wise on the device (data.loader=device) vs best per-clip path: "
        f"{best_per_clip / rows[-1][1]:.1f}x"
    )


if __name__ == "__main__":
    main()
