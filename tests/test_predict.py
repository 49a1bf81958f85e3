"""`make predict` on the image classifiers: a user's image is prepared exactly as the training
images were, the top classes come out in order, and bad input is one readable error."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from common.capabilities import PredictsFile
from common.data.images import read_image
from common.errors import UserError
from common.predict import load_trained, predict
from common.train import train
from tests.conftest import FEW_STEPS, make_config

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
