"""Audio as tensors: files read into mono clips of one length at one sampling rate, stored as
int16, and the waveform augmentations of training (time shift, background noise), batch-wise
on the device.

A clip is a 1-D float tensor of samples in [-1, 1]: `sample_rate` of them per second (16,000
for speech: frequencies up to 8 kHz, half the rate, survive, which covers what tells words
apart). Stored, it is int16 (2 bytes a sample, half of float32), as WAV files hold it: a
one-second clip is 32 KB, and Speech Commands' 105,829 clips are 3.4 GB.
"""

import math
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

from common.data.files import for_each_file
from common.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MAX_SECONDS = 600  # a longer file is refused before it is read: 10 minutes are 38 MB at 16 kHz
INT16_SCALE = 32768.0  # int16 <-> [-1, 1), as WAV readers (soundfile, torchaudio) convert PCM16


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """An audio file (WAV, FLAC, OGG, MP3, AIFF: what libsndfile reads) -> mono float32 (T,) at
    `sample_rate` Hz.

    Channels are averaged (stereo becomes mono) and other rates resampled (torchaudio's
    band-limited sinc interpolation), so any recording is accepted. A file that is no audio,
    an empty one or one over MAX_SECONDS is a UserError naming the file.
    """
    try:
        info = sf.info(str(path))
        if info.frames > MAX_SECONDS * info.samplerate:
            raise UserError(
                f"the audio file {path} is {info.frames / info.samplerate:.0f} s long, over the "
                f"limit of {MAX_SECONDS} s: cut out the part to classify first"
            )
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise UserError(
            f"cannot read the audio file {path} ({err}); expected "
            f"{', '.join(AUDIO_EXTENSIONS)} audio"
        ) from err
    if not len(data):
        raise UserError(f"the audio file {path} holds no samples: an empty clip")
    wave = torch.from_numpy(data).mean(dim=1)  # (T,): the channels' mean
    # torchaudio's resampling kernel is (new / g) x (old / g) numbers, g their greatest common
    # divisor: 160 x 441 from 44.1 to 16 kHz, but 16000 x 44101 (2.8 GB) from 44101 Hz.
    g = math.gcd(rate, sample_rate)
    if (sample_rate // g) * (rate // g) > 4_000_000:
        raise UserError(
            f"the audio file {path} is sampled at {rate} Hz, which does not resample to "
            f"{sample_rate} Hz at a sane cost: convert it to a standard rate (16, 44.1, 48 kHz) first"
        )
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def fit_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """A clip (T,) -> (num_samples,): a shorter one padded with silence on both sides (centred),
    a longer one cut to its loudest window of num_samples (where a spoken word most likely is),
    the same rule in training and in `make predict`."""
    t = len(wave)
    if t < num_samples:
        left = (num_samples - t) // 2
        return torch.nn.functional.pad(wave, (left, num_samples - t - left))
    if t > num_samples:
        energy = torch.cat([wave.new_zeros(1), wave.double().square().cumsum(0)])  # (T + 1,)
        window = energy[num_samples:] - energy[:-num_samples]  # (T - n + 1,): each start's sum
        start = int(window.argmax())
        return wave[start : start + num_samples]
    return wave


def to_int16(wave: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> int16, clipped."""
    return (wave * INT16_SCALE).round().clamp(-32768, 32767).to(torch.int16)


def decode_clips(paths: list[str | Path], sample_rate: int, num_samples: int) -> torch.Tensor:
    """Audio files -> int16 (N, num_samples): read (`read_audio`), fitted (`fit_length`),
    on a small thread pool (libsndfile releases the GIL). A file that cannot be read is a
    UserError naming it: nothing is skipped."""
    out = torch.empty(len(paths), num_samples, dtype=torch.int16)

    def read(i: int) -> None:
        out[i] = to_int16(fit_length(read_audio(paths[i], sample_rate), num_samples))

    for_each_file(len(paths), read, f"decoding {len(paths)} audio clips")
    return out


def colored_noise(kind: str, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """White, pink or brown noise (num_samples,) scaled to a peak of 1: power falling as 1/f^0,
    1/f, 1/f^2 with frequency f (hiss, rain, rumble). Shaped in the frequency domain."""
    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
    spectrum = torch.fft.rfft(torch.randn(num_samples, generator=generator))
    f = torch.arange(len(spectrum), dtype=torch.float32).clamp(min=1)
    noise = torch.fft.irfft(spectrum * f ** (-alpha / 2), n=num_samples)
    noise = noise - noise.mean()
    return noise / noise.abs().max()


def time_shift(waves: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each clip (B, T) moved by its own random number of samples in [-max_shift, max_shift],
    silence filling the gap: a word is the same word a little earlier or later."""
    b, t = waves.shape
    padded = torch.nn.functional.pad(waves, (max_shift, max_shift))  # (B, T + 2 max_shift)
    windows = padded.unfold(1, t, 1)  # (B, 2 max_shift + 1, T): a view, every shift of each clip
    start = torch.randint(
        0, 2 * max_shift + 1, (b,), device=waves.device
    )  # shift: max_shift - start
    return windows[torch.arange(b, device=waves.device), start]  # one copy of (B, T)


def mix_noise(waves: torch.Tensor, bank: torch.Tensor, prob: float, volume: float) -> torch.Tensor:
    """Add to each clip (B, T), with probability `prob`, a random stretch of the noise recordings
    `bank` (L,) (all of them end to end, L >= T) at a volume drawn from [0, `volume`], then clip
    to [-1, 1]: the same word over a running tap, a bike, a hum."""
    b, t = waves.shape
    stretches = bank.unfold(0, t, 1)  # (L - T + 1, T): a view, every stretch of the recordings
    start = torch.randint(0, len(stretches), (b,), device=waves.device)
    on = torch.rand(b, 1, device=waves.device) < prob
    gain = torch.rand(b, 1, device=waves.device) * volume * on
    return (waves + gain * stretches[start]).clamp(-1, 1)
