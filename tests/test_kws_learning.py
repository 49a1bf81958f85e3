"""Tier 3 (learning): the keyword spotter learns synthetic words through the real train() with
either net, trains on Speech Commands' layout and on an audio folder (generated files), and
`make predict` hears a .wav of any rate and channel count as training did."""

from pathlib import Path

import pytest
import torch

from common.capabilities import PredictsFile
from common.errors import UserError
from common.predict import load_trained, predict
from projects.kws.audio import fit_length, read_audio, to_int16
from projects.kws.synthetic import synthetic_speech, synthetic_words
from tests.audio_files import write_clip_folder, write_fake_speech_commands, write_wav
from tests.conftest import FEW_STEPS, make_config, train_once

SYNTHETIC = [
    "project=kws",
    "data.synthetic=true",
    "data.synthetic_size=[1200,240]",
    "data.batch_size=64",
    "model.picture_every_n_epochs=0",
    "logger=csv",
]


@pytest.fixture(scope="module")
def m5(tmp_path_factory):
    """(last checkpoint, metrics, config) of M5 trained on 12 synthetic words."""
    tmp = tmp_path_factory.mktemp("m5")
    overrides = [*SYNTHETIC, "model/kws_net=m5", "trainer.max_epochs=5"]
    ckpt, metrics = train_once(tmp, overrides)
    return ckpt, metrics, make_config(tmp, overrides)


def test_m5_learns_words_from_the_raw_waveform(m5):
    _, metrics, _ = m5
    assert metrics["test/acc"] > 0.6  # chance: 1/12; seeds 42, 0, 1 gave 0.86, 0.86, 0.91


@pytest.mark.slow  # 13 s: `make test` keeps M5's learning test, CI runs both
def test_res8_learns_words_from_log_mel_spectrograms(tmp_path):
    # SpecAugment off: it slows learning down, which a run of 100 steps cannot afford (its masks
    # are tested in test_kws.py; the full recipe's figures are in projects/kws/README.md).
    no_masks = ["model.net.frontend.freq_mask=0", "model.net.frontend.time_mask=0"]
    overrides = [*SYNTHETIC, "model/kws_net=res8", *no_masks, "trainer.max_epochs=6"]
    _, metrics = train_once(tmp_path, overrides)
    assert metrics["test/acc"] > 0.5  # chance: 1/12; seeds 42, 0, 1 gave 0.80, 0.67, 0.84


def test_speech_commands_trains_from_its_official_layout(tmp_path):
    write_fake_speech_commands(tmp_path / "data")
    overrides = ["project=kws", "data.download=false", "data.batch_size=16", *FEW_STEPS]
    ckpt, metrics = train_once(tmp_path, [*overrides, "logger=csv"])
    assert "test/acc" in metrics
    spec = torch.load(ckpt, weights_only=True)["data_spec"]
    assert spec["class_names"][-2:] == ["_unknown_", "_silence_"]  # the 12-class default
    assert (spec["sample_rate"], spec["num_samples"]) == (16000, 16000)


def test_an_audio_folder_trains_with_its_class_names(tmp_path):
    root = write_clip_folder(tmp_path / "clips", classes=3, per_class=10)
    overrides = ["project=kws", "data=audio_folder", f"data.root={root}", "data.batch_size=8"]
    ckpt, metrics = train_once(tmp_path, [*overrides, *FEW_STEPS, "logger=csv"])
    assert "test/acc" in metrics
    spec = torch.load(ckpt, weights_only=True)["data_spec"]
    assert spec["class_names"] == ["word0", "word1", "word2"]


def predict_config(tmp_path: Path, ckpt: Path, *overrides: str):
    return make_config(tmp_path, ["project=kws", f"ckpt_path={ckpt}", *overrides], "predict")


def test_predict_hears_a_stereo_44k_clip_as_training_did(tmp_path, m5):
    ckpt, _, _ = m5
    waves, _ = synthetic_speech(1, 12, 16000, 16000, seed=7)  # a clip of a new speaker
    clip = to_int16(waves[0]).float() / 32768  # (16000,) as a batch would carry it
    longer = torch.cat([torch.zeros(4000), clip, torch.zeros(9000)])  # 1.8 s: cut to its word
    path = write_wav(tmp_path / "clip.wav", longer, 16000, channels=2)
    resampled = write_wav(tmp_path / "clip44k.wav", read_audio(path, 44100), 44100, channels=2)

    model = load_trained(predict_config(tmp_path, ckpt), str(ckpt), PredictsFile, "")
    wave = fit_length(read_audio(path, 16000), 16000)
    torch.testing.assert_close(wave, 0.85 * clip, atol=2e-4, rtol=0)  # mono: (1 + 0.7) / 2
    with torch.inference_mode():
        probs = model(wave[None]).softmax(1)[0]
    printed = predict(predict_config(tmp_path, ckpt, f"input={path}"))
    lines = printed.splitlines()
    assert lines[0] == f"{path}: top 5 of 12 classes"
    names = [line.split()[0] for line in lines[1:]]
    words = synthetic_words(12)
    assert names == [words[i] for i in probs.topk(5).indices.tolist()]
    # Resampled to 44.1 kHz and back, the same word comes first.
    again = predict(predict_config(tmp_path, ckpt, f"input={resampled}")).splitlines()
    assert again[1].split()[0] == names[0]


def test_predict_refuses_a_file_that_is_no_audio_and_an_empty_clip(tmp_path, m5):
    ckpt, _, _ = m5
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(UserError, match="cannot read the audio file"):
        predict(predict_config(tmp_path, ckpt, f"input={tmp_path / 'notes.wav'}"))
    empty = write_wav(tmp_path / "empty.wav", torch.zeros(0), 16000)
    with pytest.raises(UserError, match="holds no samples"):
        predict(predict_config(tmp_path, ckpt, f"input={empty}"))


def test_eval_refuses_data_at_another_sampling_rate(tmp_path, m5):
    from common.eval import evaluate

    ckpt, _, _ = m5
    overrides = ["project=kws", f"ckpt_path={ckpt}", "logger=csv", "data.sample_rate=8000"]
    cfg = make_config(tmp_path, overrides, "eval")
    with pytest.raises(UserError, match="sample_rate=16000 and the data has sample_rate=8000"):
        evaluate(cfg)


def test_clips_too_short_for_the_net_are_one_readable_error(tmp_path):
    from common.train import train

    overrides = [*SYNTHETIC, "model/kws_net=m5", "data.clip_seconds=0.2", *FEW_STEPS]
    with pytest.raises(
        UserError, match=r"clips of 3200 samples \(0.2 s at 16000 Hz\) are too short for M5"
    ):
        train(make_config(tmp_path, overrides))
