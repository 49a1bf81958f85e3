"""make compress: int8 quantization (dynamic, static, aware training, onnxruntime's), structured
pruning, distillation, and magnitude pruning while training; the compressed checkpoints load back
through the commands that read checkpoints."""

import math
import re

import pytest
import torch
from torch import nn

from common.callbacks.pruning import cubic_sparsity, next_amount
from common.capabilities import Compresses, projects_with
from common.compress import (
    METHODS,
    compress,
    distillation_loss,
    fit_shapes,
    load_portable,
    portable_state,
    prune_channels,
    quantize_dynamic,
)
from common.errors import UserError
from common.eval import evaluate
from common.integrity import digest
from common.predict import load_trained
from common.runs import load_checkpoint
from projects.cifar10.nets import ResNet
from projects.mnist.nets import ConvNet
from tests.conftest import TINY, make_config

# A tiny run's settings: few fine-tuning steps, few timed calls.
QUICK = ["steps=3", "repeats=2", "calibration_batches=2", "test_batches=4"]


def compress_config(tmp_path, project, ckpt, *words):
    words = [f"project={project}", f"ckpt_path={ckpt}", *QUICK, *words]
    return make_config(tmp_path, words, "compress")


def logits_of(model, batch):
    with torch.inference_mode():
        return model(*model.unpack(batch)[0])


def test_the_classifiers_can_be_compressed():
    assert projects_with(Compresses) == ["cifar10", "ddp", "kws", "mnist", "sentiment", "vit"]


# --- distillation ------------------------------------------------------------------------------


def test_distillation_loss_is_the_hand_computed_kl_and_cross_entropy():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[3.0, -1.0, 0.0], [0.5, 0.5, 2.0]])
    labels = torch.tensor([1, 2])
    T, alpha = 2.0, 0.7

    def softmax(xs, t=1.0):
        e = [math.exp(x / t) for x in xs]
        return [v / sum(e) for v in e]

    kls, ces = [], []
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        p, q = softmax(t_row, T), softmax(s_row, T)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
        ces.append(-math.log(softmax(s_row)[y]))
    # Both terms are means over the batch; the soft one is scaled by T^2.
    expected = alpha * T * T * sum(kls) / 2 + (1 - alpha) * sum(ces) / 2
    got = distillation_loss(student, teacher, labels, T, alpha).item()
    assert got == pytest.approx(expected, rel=1e-5)
    ce = sum(ces) / 2  # alpha=0: the labels alone; a student equal to its teacher: no soft loss
    assert distillation_loss(student, teacher, labels, T, 0.0).item() == pytest.approx(ce, rel=1e-5)
    assert distillation_loss(teacher, teacher, labels, T, 1.0).item() == pytest.approx(0, abs=1e-6)


# --- quantization ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_mnist(tmp_path_factory):
    """(checkpoint, a test batch) of a narrow mnist net trained 80 steps: well past chance,
    so its logits are spread as a trained net's are."""
    from hydra.utils import instantiate

    from common.compress import first_batch
    from tests.conftest import train_once

    tmp = tmp_path_factory.mktemp("trained-mnist")
    words = ["project=mnist", "data.synthetic=true", "model.net.width=16", "logger=csv"]
    words += [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=80",
        "trainer.limit_val_batches=1",
    ]
    words += [
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "data.batch_size=32",
    ]
    ckpt, metrics = train_once(tmp, words)
    assert metrics["test/acc"] > 0.5
    datamodule = instantiate(make_config(tmp, words).data)
    datamodule.setup("test")
    return ckpt, first_batch(datamodule, "test")


def test_static_int8_stays_close_to_the_float_model_and_loads_back(trained_mnist, tmp_path):
    ckpt, batch = trained_mnist
    out = compress(
        compress_config(tmp_path, "mnist", ckpt, "method=static", f"output={tmp_path}/s.ckpt")
    )
    cfg = make_config(tmp_path, ["project=mnist", f"ckpt_path={ckpt}"], "predict")
    original = load_trained(cfg, str(ckpt), Compresses, "")
    quantized = load_trained(cfg, str(out), Compresses, "")  # rebuilt from the file
    assert not any(isinstance(m, nn.Conv2d) for m in quantized.net.modules())  # int8 kernels
    a, b = logits_of(original, batch), logits_of(quantized, batch)  # (B, 10)
    # int8 rounding moves a logit by about 1% of the logits' spread (measured: mean 0.5%, max
    # 6%); the predicted class agrees on all but near-ties.
    spread = a.max() - a.min()
    assert (a - b).abs().mean() <= 0.02 * spread and (a - b).abs().max() <= 0.1 * spread
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.95


def test_dynamic_int8_lstm_saves_in_safe_tensors_and_reloads_exactly(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("sentiment")
    out = compress(compress_config(tmp_path, "sentiment", ckpt, "method=dynamic"))
    assert out == ckpt.with_name("last.dynamic.ckpt")
    checkpoint = load_checkpoint(str(out))  # weights_only, and its sha256 checked
    assert not any(".rnn._all_weight_values." in k for k in checkpoint["state_dict"])
    cfg = make_config(tmp_path, ["project=sentiment", f"ckpt_path={ckpt}"], "predict")
    original = load_trained(cfg, str(ckpt), Compresses, "")
    quantized = load_trained(cfg, str(out), Compresses, "")
    assert type(quantized.net.encoder.rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")
    tokens = torch.randint(4, 200, (8, 20), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([20, 3, 7, 20, 12, 1, 9, 15])
    with torch.inference_mode():
        a, b = original(tokens, lengths), quantized(tokens, lengths)
        # Into a fresh model quantized from other float weights: only the saved ones can match.
        fresh = load_trained(cfg, str(ckpt), Compresses, "")
        torch.nn.init.normal_(fresh.net.encoder.rnn.weight_ih_l0)
        fresh.net = quantize_dynamic(fresh.net)
        assert not torch.equal(fresh(tokens, lengths), b)
        load_portable(fresh, portable_state(quantized))
        assert torch.equal(fresh(tokens, lengths), b)
    spread = a.max() - a.min()
    assert (a - b).abs().mean() <= 0.02 * spread and (a - b).abs().max() <= 0.1 * spread
    out.unlink()  # beside the session's shared checkpoint: leave it as found


def test_the_digest_covers_per_channel_int8_weights_and_their_scales():
    conv = torch.randn(4, 3, 3, 3)
    scales, zeros = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), torch.zeros(4).long()
    weight = torch.quantize_per_channel(conv, scales, zeros, 0, torch.qint8)
    before = digest({"w": weight})
    other_scale = torch.quantize_per_channel(conv, scales * 1.01, zeros, 0, torch.qint8)
    assert digest({"w": other_scale}) != before
    values = weight.int_repr().clone()
    values[0, 0, 0, 0] += 1
    changed = torch._make_per_channel_quantized_tensor(values, scales, zeros, 0)
    assert digest({"w": changed}) != before
    # An embedding's 8-bit rows: per-row float scales and zero points.
    rows = quantize_dynamic(nn.Sequential(nn.Embedding(10, 4)))[0]
    assert len(digest({"e": rows.state_dict()})) == 64


def test_a_changed_int8_weight_fails_the_checkpoint_digest():
    net = quantize_dynamic(nn.Sequential(nn.Linear(8, 4)))
    before = digest({"state_dict": net.state_dict()})
    weight, bias = net[0]._packed_params._weight_bias()
    changed = weight.int_repr()
    changed[0, 0] += 1
    requantized = torch._make_per_tensor_quantized_tensor(
        changed, weight.q_scale(), weight.q_zero_point()
    )
    net[0].set_weight_bias(requantized, bias)
    assert digest({"state_dict": net.state_dict()}) != before


# --- structured pruning -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_net, shape",
    [(ConvNet, (2, 1, 28, 28)), (lambda: ResNet(depths=[1, 1, 1, 1], width=16), (2, 3, 32, 32))],
)
def test_pruning_removes_channels_keeps_output_shapes_and_reloads(make_net, shape):
    torch.manual_seed(0)
    net, x = make_net().eval(), torch.randn(*shape)
    before = sum(p.numel() for p in net.parameters())
    prune_channels(net, (x,), amount=0.5)
    after = sum(p.numel() for p in net.parameters())
    assert after < 0.35 * before  # half the channels on both sides of most weights: ~1/4 left
    assert net(x).shape == (2, 10)
    fresh = make_net().eval()
    fit_shapes(fresh, net.state_dict())
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), net(x))


def test_pruning_refuses_a_net_without_convolutions():
    with pytest.raises(UserError, match="removes channels of convolutions"):
        prune_channels(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), (torch.randn(2, 4),), 0.5)


# --- make compress, every method, end to end ------------------------------------------------------


# Every method end to end (in-process, a tiny model): `make test-all`; the quick loop has the
# static round trip above and the sentiment one.
@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m != "onnx-int8"])
def test_each_method_writes_a_checkpoint_that_make_eval_scores_as_printed(
    tiny_checkpoint, tmp_path, method, capsys
):
    ckpt = tiny_checkpoint("mnist")
    extra = ["model.net.width=4"] if method == "distill" else []
    out = compress(compress_config(tmp_path, "mnist", ckpt, f"method={method}", *extra))
    assert out == ckpt.with_name(f"last.{method}.ckpt")
    printed = capsys.readouterr().out
    assert "| mnist | original |" in printed and f"| mnist | {method} |" in printed
    record = load_checkpoint(str(out))["compression"]
    assert record["method"] == method
    words = ["project=mnist", f"ckpt_path={out}", "logger=csv", "trainer.limit_test_batches=4"]
    metrics = evaluate(make_config(tmp_path, words, "eval"))
    assert metrics["test/acc"] == pytest.approx(record["measured"]["compressed"]["acc"], abs=1e-6)
    if method in ("prune", "distill"):  # smaller float nets: they export as any checkpoint
        params = record["measured"]
        assert params["compressed"]["params"][0] < params["original"]["params"][0] / 3
        from common.export import export

        words = ["project=mnist", f"ckpt_path={out}", f"output={tmp_path}/small.onnx"]
        assert export(make_config(tmp_path, words, "export")).stat().st_size < 200_000
    out.unlink()


@pytest.mark.slow
def test_onnx_int8_writes_a_smaller_graph(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("mnist")
    out = compress(
        compress_config(tmp_path, "mnist", ckpt, "method=onnx-int8", f"output={tmp_path}/q.onnx")
    )
    printed = capsys.readouterr().out
    assert "| mnist | onnx fp32 |" in printed and "x smaller" in printed
    import onnx

    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_the_default_method_follows_the_net(tiny_checkpoint, tmp_path):
    out = compress(
        compress_config(
            tmp_path, "sentiment", tiny_checkpoint("sentiment"), f"output={tmp_path}/d.ckpt"
        )
    )
    assert load_checkpoint(str(out))["compression"]["method"] == "dynamic"


@pytest.mark.parametrize(
    "words, message",
    [
        (["method=zip"], "method=zip is not one of dynamic, static"),
        (["method=distill"], "method=distill trains a smaller student"),
        (["method=prune", "amount=1.5"], "amount=1.5"),
        (["device=cuda"], "device=cuda"),
        (["steps=-1"], "steps=-1 must be a whole number >= 0"),
        (["method=qat", "steps=1"], "method=qat trains: steps=1 must be at least 2"),
        (["test_batches=0"], "test_batches=0 must be a whole number >= 1"),
        (["alpha=2"], r"alpha=2 \(the weight of the soft targets\) must be a number in \[0, 1\]"),
        (["temperature=0"], "temperature=0"),
        (["compare=maybe"], "compare=maybe must be true or false"),
        (["method=distill", "model.net.width=64"], "is not smaller than its teacher"),
    ],
)
def test_bad_settings_are_one_clear_error(tiny_checkpoint, tmp_path, words, message):
    with pytest.raises(UserError, match=message):
        compress(compress_config(tmp_path, "mnist", tiny_checkpoint("mnist"), *words))


def test_what_cannot_be_compressed_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="cannot be compressed; the projects that can: cifar10"):
        compress(compress_config(tmp_path, "detection", tmp_path / "none.ckpt"))
    with pytest.raises(UserError, match="has none"):  # no convolutions to remove
        compress(
            compress_config(
                tmp_path,
                "sentiment",
                tiny_checkpoint("sentiment"),
                "method=prune",
                f"output={tmp_path}/p.ckpt",
            )
        )


@pytest.mark.slow
def test_a_compressed_checkpoint_is_not_compressed_again_nor_exported_as_int8(
    tiny_checkpoint, tmp_path
):
    ckpt = tiny_checkpoint("mnist")
    out = compress(
        compress_config(tmp_path, "mnist", ckpt, "method=static", f"output={tmp_path}/s.ckpt")
    )
    with pytest.raises(UserError, match="already compressed"):
        compress(
            compress_config(tmp_path, "mnist", out, "method=static", f"output={tmp_path}/t.ckpt")
        )
    from common.export import export

    words = ["project=mnist", f"ckpt_path={out}", f"output={tmp_path}/s.onnx"]
    with pytest.raises(UserError, match="int8 layers .* cannot trace"):
        export(make_config(tmp_path, words, "export"))


# --- magnitude pruning while training -------------------------------------------------------------


@pytest.mark.parametrize("resumed_after", [None, 1])
def test_the_cubic_schedule_reaches_its_sparsity_with_masks_and_after_a_resume(resumed_after):
    from torch.nn.utils import prune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 40), nn.Linear(40, 30))
    layers = [(m, "weight") for m in net]
    steps, final = 4, 0.8
    for step in range(1, steps + 1):
        masks = [m.weight_mask for m in net if hasattr(m, "weight_mask")]
        masked = sum(int((k == 0).sum()) for k in masks) / (50 * 40 + 40 * 30)
        target = cubic_sparsity(step, steps, final)
        prune.global_unstructured(layers, prune.L1Unstructured, amount=next_amount(target, masked))
        zeros = sum(int((m.weight == 0).sum()) for m in net) / (50 * 40 + 40 * 30)
        assert zeros == pytest.approx(target, abs=1e-3)
        if step == resumed_after:  # a checkpoint holds zeros, not masks
            for m in net:
                prune.remove(m, "weight")
    assert cubic_sparsity(1, steps, final) > final / steps  # front-loaded


@pytest.mark.slow
def test_magnitude_pruning_leaves_the_checkpoint_sparse(tmp_path):
    from tests.conftest import train_once

    words = [
        "project=mnist",
        "data.synthetic=true",
        "callbacks=[default,pruning]",
        "callbacks.pruning.sparsity=0.6",
        "logger=csv",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
    ]
    ckpt, metrics = train_once(tmp_path, words)
    state = load_checkpoint(str(ckpt))["state_dict"]
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim in (2, 4)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)
    assert not any(k.endswith("_mask") or k.endswith("_orig") for k in state)  # plain weights


@pytest.mark.slow
def test_make_compress_then_make_eval_and_a_bad_method(tiny_checkpoint, tmp_path):
    from tests.test_process import assert_one_readable_error, make

    ckpt = tiny_checkpoint("mnist")
    out = tmp_path / "small.ckpt"
    words = ["PROJECT=mnist", f"ckpt_path={ckpt}", "method=prune", f"output={out}", *QUICK]
    result = make(tmp_path, "compress", *words)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\| mnist \| prune \| .*x fewer", result.stdout, re.M), result.stdout
    result = make(tmp_path, "eval", "PROJECT=mnist", f"ckpt_path={out}", "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc" in result.stdout
    result = make(tmp_path, "compress", "PROJECT=mnist", f"ckpt_path={ckpt}", "method=gzip")
    assert_one_readable_error(result, "error: method=gzip is not one of")


def test_a_compressed_checkpoint_does_not_resume_training(tiny_checkpoint, tmp_path):
    from common.train import train

    out = compress(
        compress_config(
            tmp_path,
            "mnist",
            tiny_checkpoint("mnist"),
            "method=dynamic",
            f"output={tmp_path}/d.ckpt",
        )
    )
    cfg = make_config(tmp_path, ["project=mnist", "data.synthetic=true", f"ckpt_path={out}"])
    with pytest.raises(UserError, match="written by make compress"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("project", sorted(set(TINY) & set(projects_with(Compresses))))
def test_every_compressible_project_compresses_with_its_default_method(
    tiny_checkpoint, tmp_path, project
):
    ckpt = tiny_checkpoint(project)  # shared by the session: the output goes elsewhere
    out = compress(compress_config(tmp_path, project, ckpt, f"output={tmp_path}/default.ckpt"))
    method = load_checkpoint(str(out))["compression"]["method"]
    # Nets of convolutions that torch.fx traces get static int8; the ViT (a patch convolution,
    # then linear layers) and the keyword spotter (its front end branches on the device) dynamic.
    assert method == ("static" if project in ("mnist", "cifar10") else "dynamic")
    words = [f"project={project}", f"ckpt_path={out}", "logger=csv", "trainer.limit_test_batches=1"]
    assert "test/acc" in evaluate(make_config(tmp_path, words, "eval"))
