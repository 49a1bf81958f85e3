"""`make predict` on the image classifiers: a user's image is prepared exactly as the training
images were, the top classes come out in order, and bad input is one readable error. And what
`make predict` / `make sample` write: never over the input, over an existing file only with
overwrite=true, only into a folder that exists."""

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from common.capabilities import PredictsFile, require
from common.data import images
from common.data.images import read_image
from common.errors import UserError
from common.predict import load_trained, predict
from common.sample import sample
from common.train import train
from tests.conftest import FEW_STEPS, PYTHON, make_config, run, train_once

SMALL = {
    "mnist": ["model.net.width=8"],
    "cifar10": ["model.net.depths=[1,1,1,1]", "model.net.width=8"],
    "vit": ["model.net.embed_dim=32", "model.net.depth=1", "model.net.num_heads=2"],
}
DATA = ["data.synthetic=true", "data.synthetic_size=[300,40]", "data.val_size=40"]


@pytest.fixture(scope="module", params=["mnist", "cifar10", "vit"])
def trained(request, tmp_path_factory):
    """(project, its last checkpoint, the training config) after a few steps on synthetic data."""
    project, tmp = request.param, tmp_path_factory.mktemp(request.param)
    cfg = make_config(tmp, [f"project={project}", "logger=csv", *DATA, *SMALL[project], *FEW_STEPS])
    train(cfg)
    return project, Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), cfg


def predict_config(tmp_path, project: str, ckpt: Path, *overrides: str):
    return make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}", *overrides], "predict")


def parse(text: str) -> list[tuple[str, float]]:
    """The printed (class, probability) lines, best first."""
    rows = [line.split() for line in text.splitlines()[1:]]
    return [(name, float(p.rstrip("%")) / 100) for name, p in rows]


def test_an_image_is_prepared_as_in_training_and_the_top_classes_come_in_order(tmp_path, trained):
    project, ckpt, cfg = trained
    dm = instantiate(cfg.data)
    dm.setup("fit")
    image = dm.test_set.tensors[0][0]  # uint8 (28, 28) grey or (3, 32, 32) colour
    array = image.numpy() if image.ndim == 2 else image.permute(1, 2, 0).numpy()
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    chans = 1 if image.ndim == 2 else 3
    pixels = read_image(path, image.shape[-1], chans)  # what predict feeds the model, (C, S, S)
    assert torch.equal(pixels, image.reshape(chans, *image.shape[-2:]))

    printed = parse(predict(predict_config(tmp_path, project, ckpt, f"input={path}")))
    model = load_trained(predict_config(tmp_path, project, ckpt), str(ckpt), PredictsFile, "")
    with torch.inference_mode():
        probs = model.eval_logits(dm.transform(image[None], train=False)).softmax(1)[0]
    top = probs.topk(5)
    assert [name for name, _ in printed] == [dm.class_names[i] for i in top.indices.tolist()]
    assert np.allclose([p for _, p in printed], top.values.tolist(), atol=0.0006)


def test_grey_images_become_rgb_and_colour_is_refused_for_grey_models(tmp_path, trained):
    project, ckpt, _ = trained
    grey, colour = tmp_path / "grey.png", tmp_path / "colour.jpg"
    Image.new("L", (50, 40), 90).save(grey)
    Image.new("RGB", (50, 40), (200, 30, 30)).save(colour)
    assert len(parse(predict(predict_config(tmp_path, project, ckpt, f"input={grey}")))) == 5
    if project == "mnist":
        with pytest.raises(UserError, match="colour image and this model takes grey images"):
            predict(predict_config(tmp_path, project, ckpt, f"input={colour}"))
    else:
        assert len(parse(predict(predict_config(tmp_path, project, ckpt, f"input={colour}")))) == 5


def test_bad_input_is_one_readable_error(tmp_path, trained):
    project, ckpt, _ = trained
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read the image"):
        predict(predict_config(tmp_path, project, ckpt, f"input={garbage}"))
    with pytest.raises(UserError, match="no such file"):
        predict(predict_config(tmp_path, project, ckpt, f"input={tmp_path / 'nope.png'}"))
    with pytest.raises(UserError, match="a classifier prints"):
        predict(predict_config(tmp_path, project, ckpt, f"input={garbage}", "output=x.png"))
    with pytest.raises(UserError, match="the projects that can: sentiment"):
        predict(predict_config(tmp_path, project, ckpt, "text=hello"))


# What a user can get wrong around the file written, the text given and the image read. Checks
# that come before the model loads use `unloadable`, a checkpoint that cannot load: an error
# about anything but the checkpoint proves the check came first.


@pytest.fixture
def unloadable(tmp_path) -> Path:
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    return path


@pytest.fixture(scope="module")
def detection(tmp_path_factory) -> Path:
    """A detection checkpoint after a few steps: a project that writes a file."""
    tmp = tmp_path_factory.mktemp("detection")
    data = ["data.synthetic_size=[300,40]", "data.val_size=40"]
    return train_once(tmp, ["project=detection", "logger=csv", *data, *FEW_STEPS])[0]


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sentiment")
    return train_once(tmp, ["project=sentiment", "logger=csv", *FEW_STEPS])[0]


def png_claiming(width: int, height: int) -> bytes:
    """A 68-byte PNG whose header says width x height: PIL reads the size from it alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * 10)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_the_input_is_never_the_output_and_a_file_is_replaced_only_with_overwrite(
    tmp_path, unloadable, monkeypatch
):
    image, mine = tmp_path / "a.png", tmp_path / "mine.png"
    Image.new("RGB", (20, 10), (200, 30, 30)).save(image)
    mine.write_bytes(b"the user's own file")
    (tmp_path / "link.png").symlink_to(image)
    before = image.read_bytes()
    monkeypatch.chdir(tmp_path)

    def run_predict(*overrides):
        cfg = predict_config(tmp_path, "detection", unloadable, "input=a.png", *overrides)
        return predict(cfg)

    for same in (image, "a.png", "./a.png", tmp_path / "link.png"):  # the input by another name
        for overwrite in ("false", "true"):
            with pytest.raises(UserError, match="is the file being read"):
                run_predict(f"output={same}", f"overwrite={overwrite}")
    with pytest.raises(UserError, match=f"{mine} exists: overwrite=true replaces it"):
        run_predict(f"output={mine}")
    with pytest.raises(UserError, match="overwrite=yes must be true or false"):
        run_predict(f"output={mine}", "overwrite=yes")
    with pytest.raises(UserError, match="checkpoint"):  # let through, on to the model
        run_predict(f"output={mine}", "overwrite=true")
    assert image.read_bytes() == before and mine.read_bytes() == b"the user's own file"


def test_the_output_goes_into_a_folder_that_exists_and_can_be_written(
    tmp_path, unloadable, monkeypatch
):
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 10)).save(image)
    missing = tmp_path / "no_such_folder"
    for bad, message in [
        (missing / "out.png", f"the folder {missing} does not exist"),
        (tmp_path, f"{tmp_path} is a folder"),
    ]:
        with pytest.raises(UserError, match=message):
            predict(
                predict_config(tmp_path, "detection", unloadable, f"input={image}", f"output={bad}")
            )
    assert not missing.exists()  # not made: a misspelled folder would hide the result
    with pytest.raises(UserError, match="output= is for input=<file>; a prediction from text"):
        predict(predict_config(tmp_path, "sentiment", unloadable, "text=good", "output=x.png"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder
    with pytest.raises(UserError, match=f"cannot write in the folder {tmp_path}"):
        predict(
            predict_config(
                tmp_path, "detection", unloadable, f"input={image}", f"output={tmp_path / 'b.png'}"
            )
        )


def test_a_model_with_half_a_capability_is_told_what_it_lacks():
    class OnlyPredictFile:  # a project being written, which has not named its output yet
        def predict_file(self, path, output):
            return ""

    with pytest.raises(UserError, match="its model lacks output_path"):
        require(OnlyPredictFile(), PredictsFile, "new", "predict from input=<file>")


def test_detection_checks_the_file_it_names_itself_and_writes_png_only(tmp_path, detection):
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (30, 60, 90)).save(image)
    default = tmp_path / "photo_pred.png"  # the project's name for the result
    default.write_bytes(b"the user's own file")
    with pytest.raises(UserError, match=f"{default} exists: overwrite=true replaces it"):
        predict(predict_config(tmp_path, "detection", detection, f"input={image}"))
    assert default.read_bytes() == b"the user's own file"
    predict(predict_config(tmp_path, "detection", detection, f"input={image}", "overwrite=true"))
    assert Image.open(default).size == (40, 30)
    text = tmp_path / "boxes.txt"
    with pytest.raises(UserError, match=f"output={text} must end in .png"):
        predict(
            predict_config(tmp_path, "detection", detection, f"input={image}", f"output={text}")
        )
    assert not text.exists()


def test_sample_refuses_to_replace_a_file_even_its_own_default(tmp_path, unloadable):
    default = unloadable.with_name("last_samples_n4_seed42.png")  # beside the checkpoint
    default.write_bytes(b"an earlier grid")

    def run_sample(*overrides):
        return sample(
            make_config(
                tmp_path, ["project=gan", f"ckpt_path={unloadable}", "n=4", *overrides], "sample"
            )
        )

    with pytest.raises(UserError, match=f"{default} exists: overwrite=true replaces it"):
        run_sample()
    with pytest.raises(UserError, match="checkpoint"):  # let through, on to the model
        run_sample("overwrite=true")
    missing = tmp_path / "no_such_folder"
    with pytest.raises(UserError, match=f"the folder {missing} does not exist"):
        run_sample(f"output={missing / 'grid.png'}")
    assert default.read_bytes() == b"an earlier grid" and not missing.exists()


def test_text_must_hold_a_word_the_model_knows(tmp_path, unloadable, sentiment):
    for empty in ("''", "'   '"):  # refused before the model loads
        with pytest.raises(UserError, match="text= is empty"):
            predict(predict_config(tmp_path, "sentiment", unloadable, f"text={empty}"))
    # Words the tokenizer never saw all read as [UNK]: the answer would be about nothing.
    for unknown in ("zxqv", "日本語 😀"):
        with pytest.raises(UserError, match="no word of this text is in the model's vocabulary"):
            predict(predict_config(tmp_path, "sentiment", sentiment, f"text='{unknown}'"))
    answer = predict(
        predict_config(tmp_path, "sentiment", sentiment, "text='the film was good zxqv'")
    )
    assert re.fullmatch(r"(negative|positive) \(p=0\.\d+\)", answer)


@pytest.mark.parametrize("trained", ["mnist"], indirect=True)
def test_an_image_too_large_is_refused_with_its_size(tmp_path, trained, detection, monkeypatch):
    _, ckpt, _ = trained
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_claiming(20000, 20000))  # PIL's own guard: past it, no size to read
    bomb = (
        f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, over the limit of {images.MAX_PIXELS:,}"
    )
    for project, checkpoint in [("mnist", ckpt), ("detection", detection)]:
        with pytest.raises(
            UserError, match=re.escape(f"the image {huge} is too large to read: {bomb}")
        ):
            predict(predict_config(tmp_path, project, checkpoint, f"input={huge}"))
    small = tmp_path / "small.png"
    Image.new("L", (50, 40)).save(small)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    for project, checkpoint in [("mnist", ckpt), ("detection", detection)]:
        with pytest.raises(UserError, match="50x40 = 2,000 pixels, over the limit of 1,000 pixels"):
            predict(predict_config(tmp_path, project, checkpoint, f"input={small}"))
    # PIL's limit, lowered below ours, still holds: its warning is an error too.
    monkeypatch.setattr(images, "MAX_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    with pytest.raises(UserError, match="50x40 = 2,000 pixels, over the limit of 1,500 pixels"):
        predict(predict_config(tmp_path, "mnist", ckpt, f"input={small}"))


@pytest.mark.parametrize("trained", ["mnist"], indirect=True)
def test_a_file_that_is_no_image_or_a_broken_one_is_named(tmp_path, trained, detection):
    _, ckpt, _ = trained
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.png")
    png = (tmp_path / "good.png").read_bytes()
    text, truncated, empty = tmp_path / "notes.jpg", tmp_path / "cut.png", tmp_path / "empty.png"
    text.write_text("a text file renamed .jpg")
    truncated.write_bytes(png[: len(png) // 2])
    empty.touch()
    for file in (text, truncated, empty):
        for project, checkpoint in [("mnist", ckpt), ("detection", detection)]:
            with pytest.raises(UserError, match=re.escape(f"cannot read the image {file}: ")):
                predict(predict_config(tmp_path, project, checkpoint, f"input={file}"))


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["mnist"], indirect=True)
def test_the_command_says_one_error_line_and_no_traceback(tmp_path, trained, unloadable):
    _, ckpt, _ = trained
    image, huge = tmp_path / "a.png", tmp_path / "huge.png"
    Image.new("RGB", (20, 10)).save(image)
    huge.write_bytes(png_claiming(20000, 20000))
    for overrides, message in [
        (
            ["project=detection", f"ckpt_path={unloadable}", f"input={image}", f"output={image}"],
            "is the file being read",
        ),
        (
            ["project=mnist", f"ckpt_path={ckpt}", f"input={huge}"],
            f"the image {huge} is too large to read",
        ),
    ]:
        done = run(PYTHON, "-m", "common.predict", *overrides)
        assert done.returncode != 0
        assert "Traceback" not in done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0]
