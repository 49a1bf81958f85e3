"""make export: every project with an inference path, as ONNX and as a torch.export program,
checked against the model at export time (on its own validation data and on other batch sizes
and text lengths), reloaded, and described beside the file."""

import json

import numpy as np
import pytest
import torch

from common.capabilities import Exports, projects_with
from common.errors import UserError
from common.export import LOADERS, edge_missing, export
from common.predict import load_trained
from projects.sentiment.nets import BagEncoder, RNNEncoder, SentimentNet, TransformerEncoder
from tests.conftest import TINY, make_config  # noqa: F401  (TINY: the projects)


def export_config(tmp_path, project, ckpt, *words):
    return make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}", *words], "export")


def test_every_project_with_an_inference_path_can_be_exported():
    # ddp trains the image classifier of cifar10 on several processes: it exports as cifar10.
    assert projects_with(Exports) == sorted([*TINY, "ddp"])


# The quick loop exports mnist here (and sentiment in test_serve.py's text test); `make
# test-all` every project.
QUICK = {"mnist"}


@pytest.mark.parametrize(
    "project", [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in sorted(TINY)]
)
def test_export_to_onnx_matches_the_model_at_other_batch_sizes(tiny_checkpoint, tmp_path, project):
    out = tmp_path / f"{project}.onnx"
    ckpt = tiny_checkpoint(project)
    path = export(export_config(tmp_path, project, ckpt, f"output={out}", "max_batch=16"))
    assert path == out and out.stat().st_size > 1000
    meta = json.loads(out.with_suffix(".onnx.json").read_text())
    assert meta["project"] == project and meta["checkpoint"] == str(ckpt.resolve())
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["max_batch"] == 16
    # The file again, on fresh inputs of a batch size the parity check did not use.
    model = load_trained(
        make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}"], "predict"),
        str(ckpt),
        Exports,
        "be exported",
    )
    spec = model.export_spec()
    inputs = spec.batch_of(5)
    with torch.inference_mode():
        expected = spec.eager(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = LOADERS["onnx"](out)(*inputs)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in expected]
    assert [t.name for t in spec.outputs] == [o["name"] for o in meta["outputs"]]
    for ours, theirs in zip(expected, got, strict=True):
        np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-4)


def test_an_image_classifier_takes_pixels_and_says_so(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "mnist.pt2"
    export(
        export_config(tmp_path, "mnist", tiny_checkpoint("mnist"), "format=pt2", f"output={out}")
    )
    assert "largest difference from the model" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".pt2.json").read_text())
    assert meta["inputs"][0] == {
        "name": "pixels",
        "dtype": "uint8",
        "shape": ["batch", 1, 28, 28],
        "meaning": "RGB or grey, 0-255",
    }
    assert meta["outputs"][0]["shape"] == ["batch", 10]
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert "validation data" in meta["parity"]["on"] and meta["request"] == "image"
    # A batch of 64 (max_batch) through the reloaded program.
    (logits,) = LOADERS["pt2"](out)(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8))
    assert logits.shape == (64, 10)


@pytest.mark.slow
@pytest.mark.parametrize("project", ["sentiment", "detection", "gan"])
def test_pt2_exports_of_text_detection_and_a_generator_reload(tiny_checkpoint, tmp_path, project):
    out = tmp_path / f"{project}.pt2"
    ckpt = tiny_checkpoint(project)
    export(export_config(tmp_path, project, ckpt, "format=pt2", f"output={out}"))
    meta = json.loads(out.with_suffix(".pt2.json").read_text())
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    if project == "sentiment":  # the tokenizer goes beside the graph
        assert meta["files"] == [f"{project}.tokenizer.json"]
        assert json.loads((tmp_path / meta["files"][0]).read_text())["model"]["type"] == "WordPiece"


@pytest.mark.parametrize(
    "encoder",
    [
        RNNEncoder(50, 8, 6, layers=2, cell="lstm"),
        RNNEncoder(50, 8, 6, layers=1, cell="gru"),
        RNNEncoder(50, 8, 6, layers=1, cell="lstm", bidirectional=False),
        BagEncoder(50, 8, bigram_buckets=64),
        TransformerEncoder(50, max_length=12, embed_dim=8, depth=1, num_heads=2),
    ],
    ids=["lstm2-bi", "gru-bi", "lstm-uni", "bag", "transformer"],
)
def test_each_text_encoder_has_a_traceable_twin_that_computes_the_same(encoder):
    net = SentimentNet(encoder, num_classes=3).eval()
    twin = net.exportable().eval()
    tokens = torch.randint(3, 50, (4, 12))
    lengths = torch.tensor([12, 1, 5, 9])
    tokens[torch.arange(12) >= lengths[:, None]] = 0
    with torch.inference_mode():
        expected = net(tokens, lengths)
        torch.testing.assert_close(twin(tokens, lengths), expected, atol=1e-5, rtol=1e-5)
        # Padding changes nothing, packed or not.
        padded = torch.cat([tokens, torch.zeros(4, 3, dtype=tokens.dtype)], dim=1)
        if not isinstance(encoder, TransformerEncoder):  # its positions end at max_length
            torch.testing.assert_close(twin(padded, lengths), expected, atol=1e-5, rtol=1e-5)
    # Traced with a dynamic batch, and a dynamic length unless the twin takes one length.
    fixed = getattr(twin.encoder, "fixed_length", False)
    batch, length = torch.export.Dim("batch", max=64), torch.export.Dim("length", min=3, max=12)
    shapes = ({0: batch} if fixed else {0: batch, 1: length}, {0: batch})
    program = torch.export.export(twin, (tokens, lengths), dynamic_shapes=shapes)
    short = 12 if fixed else 9
    few, few_lengths = tokens[:2, :short], lengths[:2].clamp(max=short)
    with torch.inference_mode():
        torch.testing.assert_close(
            program.module()(few, few_lengths), net(few, few_lengths), atol=1e-5, rtol=1e-5
        )


@pytest.mark.slow
def test_a_small_max_batch_is_checked_within_its_bounds(tiny_checkpoint, tmp_path):
    """A .pt2 program refuses batches above its max_batch: the parity check stays within it."""
    out = tmp_path / "small.pt2"
    words = ["format=pt2", "max_batch=3", f"output={out}"]
    export(export_config(tmp_path, "sentiment", tiny_checkpoint("sentiment"), *words))
    assert json.loads(out.with_suffix(".pt2.json").read_text())["parity"]["on"].endswith("1, 2, 3")


def test_labels_may_flip_only_at_near_ties():
    """An integer output (a detector's classes) agrees but for MAX_FLIPPED of its entries."""
    from common.export import MAX_FLIPPED, ExportSpec, Tensor, check_parity

    labels = torch.zeros(1, 10_000, dtype=torch.long)
    spec = ExportSpec(
        torch.nn.Identity(), (labels,), [Tensor("x", "int64", ["batch", 10_000], "")], [], ""
    )
    few, many = labels.clone(), labels.clone()
    few[0, :5] = 1  # 0.05%
    many[0, : int(3 * MAX_FLIPPED * 10_000)] = 1
    assert check_parity(spec, lambda x: [few], [(labels,)]) == 0.0
    assert check_parity(spec, lambda x: [many], [(labels,)]) == float("inf")


def test_an_export_that_differs_from_the_model_is_refused_and_not_kept(tiny_checkpoint, tmp_path):
    out = tmp_path / "strict.onnx"
    # ONNX Runtime's convolutions sum in another order: ~1e-6 apart, above a zero tolerance.
    with pytest.raises(UserError, match="differs from the model by up to .* not written"):
        export(
            export_config(
                tmp_path, "mnist", tiny_checkpoint("mnist"), f"output={out}", "tolerance=0"
            )
        )
    assert not out.exists()


def test_a_project_without_an_export_path_and_bad_settings_are_refused(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("mnist")
    with pytest.raises(UserError, match="cannot be exported; the projects that can: .*mnist"):
        export(make_config(tmp_path, ["project=linreg", f"ckpt_path={ckpt}"], "export"))
    with pytest.raises(UserError, match="format=tflite is not one of onnx, pt2, executorch"):
        export(export_config(tmp_path, "mnist", ckpt, "format=tflite"))
    with pytest.raises(UserError, match="max_batch=1 must be a whole number >= 2"):
        export(export_config(tmp_path, "mnist", ckpt, "max_batch=1"))
    with pytest.raises(UserError, match=r"must end in \.onnx"):
        export(export_config(tmp_path, "mnist", ckpt, f"output={tmp_path / 'x.pt2'}"))


def test_the_parity_check_on_real_data_needs_the_data(tiny_checkpoint, tmp_path):
    """The checkpoint's data gone: one readable error that names the way round it."""
    ckpt = tiny_checkpoint("mnist")
    gone = ["data.synthetic=false", f"data.data_dir={tmp_path}", "data.download=false"]
    with pytest.raises(UserError, match="parity_data=false checks on random inputs only"):
        export(export_config(tmp_path, "mnist", ckpt, *gone))
    out = tmp_path / "random.onnx"
    export(export_config(tmp_path, "mnist", ckpt, *gone, "parity_data=false", f"output={out}"))
    assert json.loads(out.with_suffix(".onnx.json").read_text())["parity"]["on"].startswith(
        "random"
    )


@pytest.mark.slow  # 10 s of lowering; an optional extra, which CI does not install
@pytest.mark.skipif(edge_missing() is not None, reason="ExecuTorch is not installed (.[edge])")
def test_executorch_export_runs_back_through_its_runtime_at_every_declared_batch(
    tiny_checkpoint, tmp_path
):
    ckpt = tiny_checkpoint("mnist")
    out = tmp_path / "mnist.pte"
    export(export_config(tmp_path, "mnist", ckpt, "format=executorch", f"output={out}"))
    assert json.loads(out.with_suffix(".pte.json").read_text())["max_batch"] == 15
    run = LOADERS["executorch"](out)
    for n in range(1, 16):
        (logits,) = run(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8))
        assert logits.shape == (n, 10)
    # Above 15 its XNNPACK convolutions fail: the export says so and keeps no file.
    with pytest.raises(UserError, match=r"fails on inputs \(16, 1, 28, 28\)"):
        export(
            export_config(
                tmp_path,
                "mnist",
                ckpt,
                "format=executorch",
                "max_batch=16",
                f"output={tmp_path / 'big.pte'}",
            )
        )
    assert not (tmp_path / "big.pte").exists()


def test_without_executorch_its_format_says_how_to_get_it(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("common.export.edge_missing", lambda: "format=executorch needs ExecuTorch")
    with pytest.raises(UserError, match="needs ExecuTorch"):
        export(export_config(tmp_path, "mnist", tiny_checkpoint("mnist"), "format=executorch"))
