"""Synthetic spoken words, made offline, that a keyword spotter has to *listen* to.

Speech is a source filtered by the vocal tract (the source-filter model): the vocal folds buzz
at a pitch f0 (85-255 Hz), giving harmonics at every multiple of f0; the mouth's shape makes
resonances, the formants, that lift some harmonics, and a vowel is recognized by its first two
or three formants whatever the pitch. Hiss-like consonants ("s", "sh") are noise through a
band. Here a word is a sequence of two or three such phonemes, and every clip is said by a
new random speaker: pitch and its glide, vocal-tract length (all formants scaled), formant
jitter, speaking rate, onset time, loudness and background noise all vary.

Words come in pairs that are each other's reverse ("a-i" and "i-a"): their clips hold the same
sounds, so the spectrum of the whole clip cannot tell them apart, and one FFT bin even less.
Only the order in time can: what a model of spectrogram frames (or of the raw waveform) must
learn, as it must for "no" and "on".
"""

import itertools

import torch

# Phoneme -> (source, formant centres in Hz for a vocal-tract scale of 1, bandwidths in Hz,
# loudness). Vowel formants are Peterson & Barney's (1952) adult averages.
PHONEMES = {
    "a": ("voiced", (730, 1090, 2440), (90, 110, 170), 1.0),
    "i": ("voiced", (270, 2290, 3010), (60, 100, 170), 1.0),
    "u": ("voiced", (300, 870, 2240), (60, 90, 170), 1.0),
    "e": ("voiced", (530, 1840, 2480), (70, 100, 170), 1.0),
    "o": ("voiced", (570, 840, 2410), (80, 90, 170), 1.0),
    "m": ("voiced", (250, 1000, 2200), (60, 300, 400), 0.5),  # a nasal: one strong low formant
    "s": ("noise", (5500, 7000, 4000), (1500, 1200, 1500), 0.35),
    "sh": ("noise", (2800, 3800, 5000), (800, 1000, 1500), 0.4),
}
NAMES = list(PHONEMES)
VOWELS = set("aeiou")
FORMANT_GAINS = (1.0, 0.5, 0.25)  # F1 loudest, as in speech
MAX_PHONEMES = 3
CHUNK = 256  # clips made at a time: bounds the working memory (~70 MB), not the result


def synthetic_words(num_words: int) -> list[str]:
    """`num_words` distinct words ("a-i", "s-o-m", ...), in pairs of a word and its reverse (an
    odd count leaves the last one alone); the same list for the same count, whatever the seed
    (they are the class names)."""
    sequences = [
        seq
        for length in (2, MAX_PHONEMES)
        for seq in itertools.product(NAMES, repeat=length)
        if any(p in VOWELS for p in seq)
        and all(a != b for a, b in itertools.pairwise(seq))
        and seq != seq[::-1]  # a palindrome would have no partner
    ]
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(0)).tolist()
    words: list[str] = []
    for i in order:
        for seq in (sequences[i], sequences[i][::-1]):
            word = "-".join(seq)
            if word not in words and len(words) < num_words:
                words.append(word)
    if len(words) < num_words:
        raise ValueError(f"at most {len(words)} synthetic words, asked for {num_words}")
    return words


def _uniform(gen, low: float, high: float, *shape) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=gen)


def _say(phonemes: torch.Tensor, sample_rate: int, num_samples: int, gen) -> torch.Tensor:
    """One clip per row of `phonemes` (C, MAX_PHONEMES) (indices into NAMES, -1: none) ->
    float (C, T), each by a new random speaker."""
    c, t = len(phonemes), num_samples
    present = phonemes >= 0  # (C, P)
    index = phonemes.clamp(min=0)
    table = [PHONEMES[n] for n in NAMES]
    centres = torch.tensor([p[1] for p in table], dtype=torch.float32)[index]  # (C, P, 3)
    widths = torch.tensor([p[2] for p in table], dtype=torch.float32)[index]  # (C, P, 3)
    loudness = torch.tensor([p[3] for p in table])[index] * present  # (C, P)
    noisy = torch.tensor([p[0] == "noise" for p in table])[index]  # (C, P)

    # The speaker: vocal-tract length scales every formant; each phoneme is said a little
    # differently every time (jitter); pitch glides between two values.
    tract = _uniform(gen, 0.85, 1.2, c, 1, 1)
    voiced_centres = centres * tract * _uniform(gen, 0.94, 1.06, c, MAX_PHONEMES, 3)
    centres = torch.where(
        noisy[..., None], centres * _uniform(gen, 0.9, 1.1, c, 1, 1), voiced_centres
    )
    f0 = torch.exp(
        _uniform(gen, torch.log(torch.tensor(85.0)), torch.log(torch.tensor(255.0)), c, 1)
    )
    glide = torch.linspace(0, 1, t)[None]  # (1, T)
    pitch = f0 * (
        _uniform(gen, 0.85, 1.15, c, 1) * (1 - glide) + _uniform(gen, 0.85, 1.15, c, 1) * glide
    )

    # Timing: vowels 150 ms, consonants 110 ms, times a speaking rate and a jitter; the word
    # starts anywhere that leaves it inside the clip.
    base = torch.where(noisy | (index == NAMES.index("m")), 0.11, 0.15)
    duration = base * _uniform(gen, 0.75, 1.35, c, 1) * _uniform(gen, 0.85, 1.15, c, MAX_PHONEMES)
    duration = duration * present  # (C, P) seconds
    total = duration.sum(1, keepdim=True)  # (C, 1)
    spare = (t / sample_rate - 0.1 - total).clamp(min=0)
    onset = 0.05 + spare * torch.rand(c, 1, generator=gen)
    ends = onset + duration.cumsum(1)  # (C, P)
    starts = ends - duration
    seconds = torch.arange(t) / sample_rate  # (T,)
    ramp = 0.025  # 25 ms cross-fades between neighbours, and the word's attack and decay
    rise = ((seconds - starts[..., None]) / ramp + 0.5).clamp(0, 1)  # (C, P, T)
    fall = ((ends[..., None] - seconds) / ramp + 0.5).clamp(0, 1)
    windows = rise * fall * loudness[..., None]  # (C, P, T)

    # Sources: a buzz (a sawtooth at the pitch: every harmonic, falling as 1/k) with a little
    # breath, and a hiss; each filtered by every phoneme's formants in the frequency domain.
    phase = torch.cumsum(pitch / sample_rate, dim=1) + torch.rand(c, 1, generator=gen)
    buzz = 2 * torch.frac(phase) - 1 + 0.05 * torch.randn(c, t, generator=gen)
    hiss = torch.randn(c, t, generator=gen)
    freqs = torch.fft.rfftfreq(t, 1 / sample_rate)  # (F,)
    gains = torch.tensor(FORMANT_GAINS)[None, None, :, None]
    # (C, P, 3, F): a resonance of each formant, summed over the three
    resonance = gains / (1 + ((freqs - centres[..., None]) / (widths[..., None] / 2)) ** 2)
    response = resonance.sum(2)  # (C, P, F)
    spectra = torch.where(
        noisy[..., None], torch.fft.rfft(hiss)[:, None], torch.fft.rfft(buzz)[:, None]
    )  # (C, P, F)
    sounds = torch.fft.irfft(spectra * response, n=t)  # (C, P, T)
    sounds = sounds / sounds.square().mean(2, keepdim=True).sqrt().clamp(min=1e-8)  # unit RMS
    word = (windows * sounds).sum(1)  # (C, T)

    # Loudness and a noisy room: background noise 10-30 dB below the word.
    word = word / word.abs().amax(1, keepdim=True).clamp(min=1e-8) * _uniform(gen, 0.1, 0.6, c, 1)
    level = word.square().sum(1, keepdim=True) / (windows.sum(1) > 0).sum(1, keepdim=True)
    snr_db = _uniform(gen, 10, 30, c, 1)
    noise = torch.randn(c, t, generator=gen) * (level / 10 ** (snr_db / 10)).sqrt()
    return (word + noise).clamp(-1, 1)


def synthetic_speech(
    n: int, num_words: int, sample_rate: int, num_samples: int, seed: int, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips of `synthetic_words(num_words)`, balanced and shuffled: (float (n, num_samples)
    in [-1, 1], int64 labels (n,)). `split_seed` makes the test set other clips than the
    training set of the same seed."""
    gen = torch.Generator().manual_seed(seed * 1000 + split_seed)
    words = synthetic_words(num_words)
    spelled = torch.full((num_words, MAX_PHONEMES), -1)
    for k, word in enumerate(words):
        parts = [NAMES.index(p) for p in word.split("-")]
        spelled[k, : len(parts)] = torch.tensor(parts)
    labels = (torch.arange(n) % num_words)[torch.randperm(n, generator=gen)]
    waves = torch.empty(n, num_samples)
    for start in range(0, n, CHUNK):
        chunk = labels[start : start + CHUNK]
        waves[start : start + len(chunk)] = _say(spelled[chunk], sample_rate, num_samples, gen)
    return waves, labels
