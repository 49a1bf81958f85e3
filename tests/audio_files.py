"""Audio files for tests: WAVs of synthetic words at any rate and channel count, folders of
them, and a fake Speech Commands v0.02 tree with the official layout and list files."""

from pathlib import Path

import soundfile as sf
import torch

from projects.kws.synthetic import synthetic_speech


def write_wav(path: Path, wave: torch.Tensor, rate: int, channels: int = 1) -> Path:
    """Write float samples (T,) as 16-bit PCM; channels > 1 hold the wave at falling volumes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = torch.stack([wave * (1 - 0.3 * c) for c in range(channels)], dim=1)  # (T, C)
    sf.write(path, data.numpy(), rate, subtype="PCM_16")
    return path


def write_clip_folder(root: Path, classes: int = 3, per_class: int = 8, seed: int = 0) -> Path:
    """root/<word>/<n>.wav: synthetic words, 16 kHz mono, one second."""
    waves, labels = synthetic_speech(classes * per_class, classes, 16000, 16000, seed)
    names = [f"word{k}" for k in range(classes)]
    for i, (wave, label) in enumerate(zip(waves, labels.tolist(), strict=True)):
        write_wav(root / names[label] / f"{i:03d}.wav", wave, 16000)
    return root


SPEECH_COMMANDS_WORDS = (
    "backward bed bird cat dog down eight five follow forward four go happy house learn left "
    "marvin nine no off on one right seven sheila six stop three tree two up visual wow yes zero"
).split()


def write_fake_speech_commands(data_dir: Path, per_word: int = 4) -> Path:
    """<data_dir>/SpeechCommands/speech_commands_v0.02/ as the archive unpacks: 35 word folders
    of <speaker>_nohash_<n>.wav (one-second and shorter 16 kHz clips), validation_list.txt and
    testing_list.txt naming one clip of each word each, and _background_noise_/ recordings."""
    root = data_dir / "SpeechCommands" / "speech_commands_v0.02"
    n = len(SPEECH_COMMANDS_WORDS) * per_word
    waves, _ = synthetic_speech(n, 12, 16000, 16000, seed=3)
    val, test = [], []
    for w, word in enumerate(SPEECH_COMMANDS_WORDS):
        for i in range(per_word):
            name = f"{word}/{w:04x}{i:04x}_nohash_0.wav"
            wave = waves[w * per_word + i]
            write_wav(root / name, wave if i % 2 else wave[:12000], 16000)  # some are short
            (val if i == 0 else test if i == 1 else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    gen = torch.Generator().manual_seed(0)
    for k in range(2):
        noise = 0.3 * torch.randn(3 * 16000, generator=gen)
        write_wav(root / "_background_noise_" / f"noise{k}.wav", noise.clamp(-1, 1), 16000)
    return root
