"""Keyword-spotting nets: each maps a batch of clips, float waveforms (B, T) in [-1, 1], to class
logits (B, num_classes), so a net is the whole model from samples to words (an exported net
takes audio, not features).

- `M5` (Dai et al. 2017) learns its own filter bank: 1-D convolutions on the raw samples.
- `ResNet8` (after Tang & Lin 2018) is a 2-D CNN on a log-mel spectrogram computed by its
  `LogMel` front end (torchaudio transforms, batch-wise on the net's device), which also applies
  SpecAugment while training.
"""

import torch
import torchaudio
from torch import nn

# On a CPU the STFT of a whole batch (128 clips: 26 MB of frames) runs 2.5x slower than the same
# work 16 clips at a time, whose frames stay in cache (benchmarks/audio.py measured it).
CPU_CHUNK = 16


class MelDB(nn.Module):
    """Waveforms (B, T) -> log-mel spectrograms in decibels (B, 1, n_mels, frames).

    An STFT of `win_ms` windows every `hop_ms` (frames = T / hop + 1), its power summed into
    `n_mels` triangular bands evenly spaced on the mel scale (about linear below 1 kHz,
    logarithmic above: as the ear resolves pitch), then 10 log10: loudness as the ear hears it,
    floored `top_db` below each clip's loudest bin.
    """

    def __init__(
        self,
        sample_rate: int,
        n_mels: int = 40,
        win_ms: float = 30.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        top_db: float = 80.0,
    ):
        super().__init__()
        win = round(sample_rate * win_ms / 1000)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate,
            n_fft=1 << (win - 1).bit_length(),  # the next power of two: 512 for 480 samples
            win_length=win,
            hop_length=round(sample_rate * hop_ms / 1000),
            f_min=f_min,
            n_mels=n_mels,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=top_db)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        # Not while torch.export traces: the chunking would fix the batch size into the graph.
        chunk = waves.device.type == "cpu" and not torch.compiler.is_exporting()
        if chunk and len(waves) > CPU_CHUNK:
            return torch.cat([self(chunk) for chunk in waves.split(CPU_CHUNK)])
        # float32 even under mixed precision (trainer=gpu): autocast would run the mel filter
        # bank's matmul in bf16 and round the energies before the logarithm.
        with torch.autocast(waves.device.type, enabled=False):
            # (B, 1, T) in, not (B, T): AmplitudeToDB floors `top_db` below the loudest bin of
            # each (B, 1, ...) item, but of the whole batch for a 3-D (B, n_mels, frames) tensor.
            return self.to_db(self.mel(waves[:, None].float()))  # (B, 1, n_mels, frames)


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) without time warping: while training, `num_masks` bands of
    fewer than `freq_mask` mel bins and `num_masks` stretches of fewer than `time_mask` frames
    (widths drawn from [0, freq_mask) and [0, time_mask), as torchaudio does) are set to
    zero (the mean, on normalized inputs), each clip its own. A word missing a band or a
    moment is still that word: the net learns to use all of its evidence. Identity in eval."""

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, num_masks: int = 2):
        super().__init__()
        masks = []
        if freq_mask > 0:
            masks += [torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)]
        if time_mask > 0:
            masks += [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)]
        self.masks = nn.ModuleList(masks * num_masks)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, n_mels, frames)
        if self.training:
            for mask in self.masks:
                spec = mask(spec)
        return spec


class LogMel(nn.Module):
    """The front end of a spectrogram net: waveforms (B, T) -> normalized log-mel features
    (B, 1, n_mels, frames), SpecAugmented while training.

    Normalization is a BatchNorm per mel band (mean 0, std 1 over the training clips, as
    cepstral mean and variance normalization does), learned with the net.
    """

    def __init__(
        self,
        sample_rate: int,
        n_mels: int = 40,
        win_ms: float = 30.0,
        hop_ms: float = 10.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        num_masks: int = 2,
    ):
        super().__init__()
        self.spectrogram = MelDB(sample_rate, n_mels, win_ms, hop_ms)
        self.norm = nn.BatchNorm2d(n_mels)  # over (B, n_mels, 1, frames): one per band
        self.augment = SpecAugment(freq_mask, time_mask, num_masks)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(waves)  # (B, 1, M, F)
        spec = self.norm(spec.transpose(1, 2)).transpose(1, 2)  # bands as channels, and back
        return self.augment(spec)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, dims: int = 2) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    layers = [conv(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), norm(c_out)]
    return nn.Sequential(*layers)


class M5(nn.Module):
    """M5 (Dai et al. 2017): four 1-D convolution layers on the raw waveform, each followed by
    max pooling by 4, then the mean over time and a linear classifier.

    The first layer's `kernel`-sample filters (80: 5 ms at 16 kHz) with stride `stride` learn a
    filter bank in place of the STFT. `width` channels in the first two layers, twice that in
    the last two: width=32, stride=16 is the torchaudio tutorial's (25k parameters);
    width=128, stride=4 the paper's, but for its last layer (512 channels; here 256).
    """

    def __init__(self, num_classes: int, width: int = 32, stride: int = 16, kernel: int = 80):
        super().__init__()
        channels = [width, width, 2 * width, 2 * width]
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            k, s = (kernel, stride) if i == 0 else (3, 1)
            layers += [conv_bn(c_in, c, k, s, dims=1), nn.ReLU(inplace=True), nn.MaxPool1d(4)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.features(waves[:, None])  # (B, 1, T) -> (B, 2*width, T / (stride * 256))
        return self.head(x.mean(dim=2))


class Residual(nn.Module):
    """Two 3x3 convolutions with batch norm, added to their input."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(width, width, 3), nn.ReLU(inplace=True), conv_bn(width, width, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResNet8(nn.Module):
    """res8 (Tang & Lin 2018) on the log-mel front end: a 3x3 convolution, 4x3 average pooling
    (40 bands x 101 frames -> 10 x 33), three residual blocks of `width` channels, the mean over
    the time-frequency map, a linear classifier. width=45 is the paper's res8 (110k
    parameters), width=19 its res8-narrow (20k).
    """

    def __init__(self, num_classes: int, frontend: LogMel, width: int = 45, blocks: int = 3):
        super().__init__()
        self.frontend = frontend
        self.stem = nn.Sequential(conv_bn(1, width, 3), nn.ReLU(inplace=True), nn.AvgPool2d((4, 3)))
        self.blocks = nn.Sequential(*(Residual(width) for _ in range(blocks)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.frontend(waves))  # (B, width, n_mels / 4, frames / 3)
        return self.head(self.blocks(x).mean(dim=(2, 3)))
