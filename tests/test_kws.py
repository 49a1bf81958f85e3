"""The keyword spotter's parts: reading any audio file into the training clips' form, the log-mel
front end and SpecAugment, the waveform augmentations, the nets, the synthetic words, and the
Speech Commands and audio-folder sources on generated files."""

import math

import pytest
import soundfile as sf
import torch

import projects.kws.audio as audio
import projects.kws.data as kws_data
from common.errors import UserError
from projects.kws.audio import (
    colored_noise,
    fit_length,
    mix_noise,
    read_audio,
    time_shift,
    to_int16,
)
from projects.kws.data import AudioFolder, SpeechCommands
from projects.kws.nets import M5, LogMel, MelDB, ResNet8, SpecAugment
from projects.kws.synthetic import synthetic_speech, synthetic_words
from tests.audio_files import write_clip_folder, write_fake_speech_commands, write_wav


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(round(rate * seconds)) / rate)


def peak_frequency(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(torch.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


# --- files ----------------------------------------------------------------------------------------


def test_a_stereo_44k_file_becomes_mono_at_the_configured_rate(tmp_path):
    left, right = sine(1000, 44100, 0.5), sine(3000, 44100, 0.5, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, torch.stack([left, right], 1).numpy(), 44100, subtype="FLOAT")
    wave = read_audio(path, 16000)
    assert wave.shape == (8000,)  # 0.5 s at 16 kHz
    spectrum = torch.fft.rfft(wave).abs()
    freqs = torch.fft.rfftfreq(len(wave), 1 / 16000)
    at = {f: float(spectrum[(freqs - f).abs().argmin()]) for f in (1000, 3000)}
    # The mean of the channels: both tones, the right one at half the left one's amplitude.
    assert at[3000] / at[1000] == pytest.approx(0.5, rel=0.05)
    assert peak_frequency(wave, 16000) == pytest.approx(1000, abs=5)


def test_resampling_keeps_the_pitch_and_the_duration(tmp_path):
    for rate in (8000, 22050, 48000):
        path = write_wav(tmp_path / f"{rate}.wav", sine(440, rate, 1.0), rate)
        wave = read_audio(path, 16000)
        assert len(wave) == 16000
        assert peak_frequency(wave, 16000) == pytest.approx(440, abs=2)


def test_a_file_that_is_no_audio_or_an_empty_clip_is_one_readable_error(tmp_path, monkeypatch):
    (tmp_path / "text.wav").write_text("not a sound")
    with pytest.raises(UserError, match=r"cannot read the audio file .*text\.wav"):
        read_audio(tmp_path / "text.wav", 16000)
    sf.write(tmp_path / "empty.wav", torch.zeros(0).numpy(), 16000)
    with pytest.raises(UserError, match="holds no samples"):
        read_audio(tmp_path / "empty.wav", 16000)
    monkeypatch.setattr(audio, "MAX_SECONDS", 1)
    write_wav(tmp_path / "long.wav", torch.zeros(32000), 16000)
    with pytest.raises(UserError, match="2 s long, over the limit of 1 s"):
        read_audio(tmp_path / "long.wav", 16000)


def test_fit_length_pads_short_clips_centred_and_cuts_long_ones_at_their_loudest():
    padded = fit_length(torch.ones(6), 10)
    assert padded.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    long = torch.zeros(100)
    long[60:70] = 1.0  # the "word"
    cut = fit_length(long, 20)
    assert cut.shape == (20,) and cut.sum() == 10  # the whole word is inside the window
    assert fit_length(torch.arange(5.0), 5).tolist() == [0, 1, 2, 3, 4]


def test_int16_round_trip_is_exact_for_pcm16_values():
    wave = torch.tensor([-1.0, -0.5, 0.0, 0.25, 32767 / 32768, 1.5])
    assert to_int16(wave).tolist() == [-32768, -16384, 0, 8192, 32767, 32767]  # 1.5 clipped


# --- features -------------------------------------------------------------------------------------


def test_log_mel_shapes_and_a_clip_s_features_do_not_depend_on_its_batch():
    mel = MelDB(16000)  # 40 bands, 30 ms windows every 10 ms
    quiet = 1e-4 * torch.randn(1, 16000)  # ~100 dB below the loud clip: past the 80 dB floor
    loud = torch.randn(1, 16000)
    alone = mel(quiet)
    assert alone.shape == (1, 1, 40, 101)  # one frame per 10 ms, plus one (centred frames)
    together = mel(torch.cat([quiet, loud]))
    torch.testing.assert_close(together[:1], alone)  # the 80 dB floor is per clip
    batch_floor = mel.to_db(mel.mel(torch.cat([quiet, loud])))  # (2, 40, 101): 3-D input
    assert not torch.allclose(batch_floor[0], alone[0, 0])  # would floor by the loud clip
    many = 0.1 * torch.randn(40, 16000)  # more than CPU_CHUNK: computed 16 clips at a time
    torch.testing.assert_close(mel(many), torch.cat([mel(clip[None]) for clip in many]))
    assert MelDB(8000, n_mels=32)(torch.randn(3, 8000)).shape == (3, 1, 32, 101)


def test_log_mel_stays_float32_under_mixed_precision():
    mel, waves = MelDB(16000), 0.1 * torch.randn(4, 16000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mel(waves)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, mel(waves))


def test_a_tone_lights_the_mel_band_of_its_frequency():
    """40 bands evenly spaced on the (HTK) mel scale from 20 Hz to 8 kHz: a tone's loudest band
    is where its frequency falls on that scale."""
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    step = (mel(8000) - mel(20)) / 41  # 40 triangles: 42 edges
    to_db = MelDB(16000)
    for freq in (300, 1000, 4000):
        spec = to_db(sine(freq, 16000, 1.0)[None])[0, 0]  # (40, 101)
        expected = (mel(freq) - mel(20)) / step - 1  # the band whose peak is nearest
        assert abs(int(spec.mean(1).argmax()) - expected) <= 0.6


def test_spec_augment_masks_only_inside_the_configured_widths():
    torch.manual_seed(0)
    augment = SpecAugment(freq_mask=6, time_mask=15, num_masks=2).train()
    spec = torch.ones(64, 1, 40, 101)
    masked = augment(spec)[:, 0]  # (B, 40, 101): zero where masked
    for clip in masked:
        rows = (clip == 0).all(dim=1)  # bands masked over every frame
        cols = (clip == 0).all(dim=0)  # frames masked over every band
        assert torch.equal(clip == 0, rows[:, None] | cols[None, :])  # nothing else is zeroed
        assert rows.sum() <= 2 * 5 and cols.sum() <= 2 * 14  # widths < the mask parameter
    assert (masked == 0).any(dim=(1, 2)).float().mean() > 0.9  # and masks do happen
    assert torch.equal(augment.eval()(spec), spec)  # evaluation sees the whole spectrogram


def test_the_front_end_normalizes_each_band_and_masks_only_while_training():
    frontend = LogMel(16000, freq_mask=8, time_mask=20)
    waves = 0.1 * torch.randn(16, 16000)
    features = frontend.train()(waves)
    assert features.shape == (16, 1, 40, 101)
    frontend.eval()
    torch.testing.assert_close(frontend(waves), frontend(waves))  # deterministic in eval
    unmasked = LogMel(16000).train()(waves)  # batch statistics: mean 0, std 1 per band
    assert unmasked.mean(dim=(0, 1, 3)).abs().max() < 1e-4
    assert (unmasked.std(dim=(0, 1, 3)) - 1).abs().max() < 1e-2


@pytest.mark.parametrize(
    "net, params",
    [
        (lambda: M5(12), 25_228),  # the torchaudio tutorial's M5
        (lambda: ResNet8(12, LogMel(16000), width=19), 20_251),  # res8-narrow: ~20k in the paper
        (lambda: ResNet8(12, LogMel(16000), width=45), 111_017),  # res8: ~110k in the paper
    ],
)
def test_nets_map_waveforms_to_logits(net, params):
    net = net()
    assert sum(p.numel() for p in net.parameters()) == params
    assert net(torch.randn(3, 16000)).shape == (3, 12)
    assert net.eval()(torch.randn(1, 8000)).shape == (1, 12)  # any length: global pooling


# --- augmentation ---------------------------------------------------------------------------------


def test_time_shift_moves_each_clip_within_the_limit_and_fills_with_silence():
    torch.manual_seed(0)
    t = torch.arange(200)
    waves = (t + 1.0).repeat(32, 1)  # (32, 200): sample t holds t + 1, no zeros
    shifts = set()
    for row in time_shift(waves, 10):
        first = int(row.nonzero()[0])
        shift = first - int(row[first] - 1)  # where sample 0 went (negative: cut off the front)
        assert -10 <= shift <= 10
        source = t - shift
        expected = torch.where((source >= 0) & (source < 200), source + 1.0, 0.0)
        assert torch.equal(row, expected)
        shifts.add(shift)
    assert len(shifts) > 5  # each clip draws its own


def test_mix_noise_adds_a_stretch_of_the_recordings_at_a_bounded_volume():
    torch.manual_seed(0)
    bank = torch.arange(1000, dtype=torch.float32) / 1000  # a ramp: a stretch shows where it began
    waves = torch.zeros(64, 100)
    mixed = mix_noise(waves, bank, prob=1.0, volume=0.1)
    for row in mixed:
        gain = row[1] - row[0]  # the ramp's step, times the gain
        if gain == 0:
            continue
        start = row[0] / gain
        expected = gain * (start + torch.arange(100.0))
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-4)
        assert gain * 1000 <= 0.1 + 1e-6
    assert torch.equal(mix_noise(waves, bank, prob=0.0, volume=0.1), waves)


def test_colored_noise_has_the_slope_it_is_named_after():
    gen = torch.Generator().manual_seed(0)
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        noise = colored_noise(kind, 1 << 16, gen)
        assert noise.abs().max() == pytest.approx(1.0)
        power = torch.fft.rfft(noise).abs().square()
        low, high = power[100:200].mean(), power[1000:2000].mean()  # a decade apart
        assert math.log10(high / low) == pytest.approx(slope, abs=0.25)


# --- synthetic words ------------------------------------------------------------------------------


def test_synthetic_words_come_with_their_reverse_and_do_not_depend_on_the_seed():
    words = synthetic_words(12)
    assert len(set(words)) == 12
    assert all("-".join(reversed(w.split("-"))) in words for w in words)
    assert synthetic_words(35)[:12] == words
    with pytest.raises(ValueError, match="at most"):
        synthetic_words(10_000)


def test_synthetic_speech_is_balanced_seeded_and_each_split_new():
    waves, labels = synthetic_speech(120, 12, 16000, 16000, seed=1)
    assert waves.shape == (120, 16000) and waves.dtype == torch.float32
    assert waves.abs().max() <= 1 and labels.bincount().tolist() == [10] * 12
    again, _ = synthetic_speech(120, 12, 16000, 16000, seed=1)
    other, _ = synthetic_speech(120, 12, 16000, 16000, seed=1, split_seed=1)
    assert torch.equal(waves, again) and not torch.equal(waves, other)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_word_and_its_reverse_have_the_same_spectrum_so_only_time_tells_them_apart():
    """A linear classifier of the whole clip's spectrum (what one FFT of the clip sees) finds a
    word's pair but, within it, is about a coin flip; of the spectrogram (the spectrum frame by
    frame, 100 ms apart) it tells the words apart."""
    from sklearn.linear_model import LogisticRegression

    waves, labels = synthetic_speech(960, 12, 16000, 16000, seed=0)
    spec = MelDB(16000)(waves)[:, 0]  # (N, 40, 101) dB
    whole = 10 * torch.log10((10 ** (spec / 10)).mean(dim=2))  # (N, 40): the clip's spectrum
    frames = torch.nn.functional.avg_pool1d(spec, 10)  # (N, 40, 10): every 100 ms
    words = synthetic_words(12)
    partner = torch.tensor([words.index("-".join(reversed(w.split("-")))) for w in words])
    truth = labels[720:]
    scores = {}
    for name, x in (("whole", whole), ("frames", frames.flatten(1))):
        x = x - x.mean(dim=1, keepdim=True)  # loudness out
        clf = LogisticRegression(max_iter=300).fit(x[:720], labels[:720])
        guess = torch.from_numpy(clf.predict(x[720:]))
        pair = ((guess == truth) | (guess == partner[truth])).float().mean()
        scores[name] = (guess == truth).float().mean(), pair
    exact, pair = scores["whole"]
    assert pair > 0.85  # measured 0.96: the spectrum finds the pair (chance: 1/6)...
    assert exact < 0.65 * pair  # ...measured 0.45 of 0.96: within it, a coin flip
    assert scores["frames"][0] > 0.8  # measured 0.94: in time, the order shows


# --- sources --------------------------------------------------------------------------------------


def test_audio_folder_reads_any_rate_and_channels_and_caches(tmp_path, monkeypatch):
    root = write_clip_folder(tmp_path / "clips", classes=3, per_class=6)
    stereo = read_audio(root / "word0" / sorted((root / "word0").iterdir())[0].name, 44100)
    write_wav(root / "word0" / "stereo44k.wav", stereo, 44100, channels=2)
    write_wav(root / "word1" / "narrow8k.flac", sine(300, 8000, 1.5), 8000)
    dm = AudioFolder(str(tmp_path / "data"), root=str(root), num_classes=3, test_size=0.2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == ["word0", "word1", "word2"]
    clips = [dm.train_set.tensors[0], dm.val_set.tensors[0], dm.test_set.tensors[0]]
    assert sum(len(c) for c in clips) == 20
    assert all(c.dtype == torch.int16 and c.shape[1] == 16000 for c in clips)
    # The 1.5 s tone at 8 kHz: resampled, still 300 Hz, and one second of it kept.
    (tone,) = (c for c in torch.cat(clips) if peak_frequency(c.float(), 16000) == 300)
    assert (tone != 0).float().mean() > 0.99  # the tone fills the second: cut, not padded
    # Read again: from the cache, no file decoded.
    monkeypatch.setattr(kws_data, "decode_clips", lambda *a: pytest.fail("decoded again"))
    again = AudioFolder(str(tmp_path / "data"), root=str(root), num_classes=3, test_size=0.2)
    again.setup("fit")
    assert torch.equal(again.train_set.tensors[0], dm.train_set.tensors[0])


def test_audio_folder_errors_name_the_problem(tmp_path):
    root = write_clip_folder(tmp_path / "clips", classes=2, per_class=3)
    (root / "word1" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    dm = AudioFolder(str(tmp_path / "data"), root=str(root), num_classes=2)
    with pytest.raises(UserError, match=r"cannot read the audio file .*broken\.wav"):
        dm.prepare_data()
    (root / "word1" / "broken.wav").unlink()
    (root / "empty_class").mkdir()
    with pytest.raises(UserError, match=r"empty_class holds no clips"):
        AudioFolder(str(tmp_path / "data"), root=str(root), num_classes=3).prepare_data()
    (root / "empty_class").rmdir()
    with pytest.raises(UserError, match="data.num_classes=5 but .* has 2 class folders"):
        AudioFolder(str(tmp_path / "data"), root=str(root), num_classes=5).prepare_data()
    with pytest.raises(UserError, match="data.root does not exist"):
        AudioFolder(str(tmp_path / "data"), root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="data.root is not set"):
        AudioFolder(str(tmp_path / "data"))


def test_batches_become_floats_on_the_device_and_only_training_batches_are_augmented(tmp_path):
    from types import SimpleNamespace

    dm = AudioFolder(str(tmp_path), synthetic=True, synthetic_size=(60, 12), num_classes=3)
    dm.setup("fit")
    waves, labels = next(iter(dm.train_dataloader()))
    assert waves.dtype == torch.int16
    plain, _ = dm.on_after_batch_transfer((waves, labels))  # no trainer: evaluation
    torch.testing.assert_close(plain, waves.float() / 32768)
    dm.trainer = SimpleNamespace(training=False)  # validating
    torch.testing.assert_close(dm.on_after_batch_transfer((waves, labels))[0], plain)
    dm.trainer = SimpleNamespace(training=True)
    augmented, same_labels = dm.on_after_batch_transfer((waves, labels))
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    assert augmented.abs().max() <= 1 and torch.equal(same_labels, labels)
    assert dm.spec().sample_rate == 16000 and dm.spec().num_samples == 16000
    assert dm.spec().class_names == synthetic_words(3)


def test_speech_commands_uses_the_official_lists_and_the_12_class_task(tmp_path):
    write_fake_speech_commands(tmp_path, per_word=4)
    dm = SpeechCommands(str(tmp_path), num_classes=35, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.class_names) == 35 and dm.class_names[0] == "backward"
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sizes == [70, 35, 35]  # 2, 1, 1 clips of each word: as the list files say
    assert dm.val_set.tensors[1].tolist() == list(range(35))  # one of each, in word order

    twelve = SpeechCommands(str(tmp_path), num_classes=12, download=False)
    twelve.setup("fit")
    assert twelve.class_names[-2:] == ["_unknown_", "_silence_"]
    labels = twelve.train_set.tensors[1]
    counts = labels.bincount(minlength=12).tolist()
    assert counts[:10] == [2] * 10  # the ten words, all their clips
    assert counts[10] == counts[11] == math.ceil(0.1 * 20)  # 10% of the ten words' clips each
    silence = twelve.train_set.tensors[0][labels == 11]
    assert silence.shape == (2, 16000) and silence.abs().amax(1).min() > 0  # noise, not zeros


def test_a_corrupt_speech_commands_clip_is_one_error_naming_it_and_the_remedy(tmp_path):
    root = write_fake_speech_commands(tmp_path, per_word=2)
    (root / "yes" / "0000broken_nohash_0.wav").write_bytes(b"RIFF\x00garbage")
    with pytest.raises(UserError) as error:
        SpeechCommands(str(tmp_path), download=False).prepare_data()
    message = str(error.value)
    assert "0000broken_nohash_0.wav" in message
    assert "to unpack or download it again" in message and "data.synthetic=true" in message


def test_speech_commands_missing_is_one_error_naming_the_folder_and_the_switch(tmp_path):
    dm = SpeechCommands(str(tmp_path), download=False)
    with pytest.raises(UserError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "speech_commands_v0.02" in message and "validation_list.txt" in message
    assert "data.download=false" in message and "data.synthetic=true" in message
    with pytest.raises(UserError, match="35 words .* or the standard 10 words"):
        SpeechCommands(str(tmp_path), num_classes=10)
