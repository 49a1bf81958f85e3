"""The detection project end to end: it learns (mAP rises), logs pictures, and `make predict`
draws boxes on a user's image."""

from pathlib import Path

import pytest
from PIL import Image

from common.errors import UserError
from common.predict import predict
from common.train import train
from tests.conftest import FEW_STEPS, make_config, train_once

SHORT = [
    *FEW_STEPS,
    "data.synthetic_size=[300,40]",
    "data.val_size=40",
]


def test_detector_learns_synthetic_shapes(config):
    cfg = config(
        "project=detection",
        "logger=csv",
        "trainer.max_epochs=1",
        "data.image_size=64",
        "data.min_size=12",
        "data.max_size=28",
        "data.max_objects=3",
        "model.optimizer.lr=0.004",
        "data.synthetic_size=[3400,200]",
        "data.val_size=200",
        "model.log_images=0",
    )
    metrics = train(cfg)
    # 100 steps of 32 small images: measured 0.57; an untrained detector scores about 0.
    assert metrics["test/map50"] > 0.3


def test_validation_logs_a_picture_of_the_boxes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(tmp_path, ["project=detection", "logger=tensorboard", *SHORT])
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir))).Reload()
    assert "val/predictions" in events.Tags()["images"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("detection")
    return train_once(tmp, ["project=detection", "logger=csv", *SHORT])[0]


def predict_config(tmp_path, ckpt: Path, image: Path):
    overrides = ["project=detection", f"ckpt_path={ckpt}", f"input={image}"]
    return make_config(tmp_path, overrides, "predict")


def test_predict_writes_an_annotated_image_of_the_input_size(tmp_path, checkpoint):
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 150), (30, 60, 90)).save(image)
    text = predict(predict_config(tmp_path, checkpoint, image))
    out = tmp_path / "photo_pred.png"
    assert out.is_file() and f"wrote {out}" in text
    assert Image.open(out).size == (200, 150)


def test_predict_on_a_missing_or_unreadable_image_is_a_user_error(tmp_path, checkpoint):
    with pytest.raises(UserError, match="no such file"):
        predict(predict_config(tmp_path, checkpoint, tmp_path / "nope.png"))
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="cannot read the image"):
        predict(predict_config(tmp_path, checkpoint, garbage))
