"""make export: a trained image classifier as ONNX and as a torch.export program, checked
against the model at export time, with its description written beside it."""

import json

import numpy as np
import pytest
import torch

from common.capabilities import Exports
from common.errors import UserError
from common.export import export, load_onnx, load_pt2
from common.predict import load_trained
from tests.conftest import FEW_STEPS, make_config, train_once


@pytest.fixture(scope="module")
def mnist_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mnist")
    ckpt, _ = train_once(tmp, ["project=mnist", "data.synthetic=true", "logger=csv", *FEW_STEPS])
    return ckpt


def export_config(tmp_path, ckpt, *words):
    return make_config(tmp_path, ["project=mnist", f"ckpt_path={ckpt}", *words], "export")


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_image_classifier_exports_with_a_dynamic_batch_and_its_description(
    mnist_ckpt, tmp_path, fmt, capsys
):
    out = tmp_path / f"mnist.{fmt}"
    path = export(export_config(tmp_path, mnist_ckpt, f"format={fmt}", f"output={out}"))
    assert path == out and out.stat().st_size > 10_000
    assert "largest difference from the model" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(f".{fmt}.json").read_text())
    assert meta["inputs"][0] == {
        "name": "pixels",
        "dtype": "uint8",
        "shape": ["batch", 1, 28, 28],
        "meaning": "RGB or grey, 0-255",
    }
    assert meta["outputs"][0]["shape"] == ["batch", 10]
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["parity_max_abs_diff"] <= 1e-4
    # Another batch size than the example's, against the model as `make predict` runs it.
    cfg = make_config(tmp_path, ["project=mnist", f"ckpt_path={mnist_ckpt}"], "predict")
    model = load_trained(cfg, str(mnist_ckpt), Exports, "be exported")
    pixels = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model.export_spec().module(pixels)
    run = load_onnx(out) if fmt == "onnx" else load_pt2(out)
    (logits,) = run(pixels)
    assert logits.shape == (5, 10)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-4)


def test_an_export_that_differs_from_the_model_is_refused_and_not_kept(mnist_ckpt, tmp_path):
    out = tmp_path / "strict.onnx"
    # ONNX Runtime's convolutions sum in another order: ~1e-6 apart, above a zero tolerance.
    with pytest.raises(UserError, match="differs from the model by up to .* not written"):
        export(export_config(tmp_path, mnist_ckpt, f"output={out}", "tolerance=0"))
    assert not out.exists()


def test_a_project_without_an_export_path_and_a_bad_format_are_refused(mnist_ckpt, tmp_path):
    with pytest.raises(UserError, match="cannot be exported; the projects that can: .*mnist"):
        export(make_config(tmp_path, ["project=linreg", f"ckpt_path={mnist_ckpt}"], "export"))
    with pytest.raises(UserError, match="format=tflite is not one of onnx, pt2"):
        export(export_config(tmp_path, mnist_ckpt, "format=tflite"))
