"""make serve: round trips through the app (FastAPI's test client), each class of bad request, the
batcher, the checks on the exported graph it serves, and (slow) the real process and page."""

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.serve import free_port, multipart
from common.capabilities import Serves, projects_with
from common.data.synthetic import synthetic_images
from common.errors import UserError
from common.export import export
from common.instantiate import instantiate_model
from common.predict import load_trained
from common.runs import run_dir_of
from common.serve import Batcher, Service, build_app
from projects.kws.synthetic import synthetic_speech
from tests.audio_files import write_wav
from tests.conftest import ROOT, make_config


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digits(n: int = 6) -> list[bytes]:
    """n look-alike digits of the synthetic MNIST test set (seed 42, as the tiny run's)."""
    images, _ = synthetic_images(n, 10, (28, 28), seed=42, split_seed=1)
    return [png(image.numpy()) for image in images]


def exported(tmp_path: Path, project: str, ckpt: Path, *words: str) -> Path:
    out = tmp_path / f"{project}.onnx"
    overrides = [f"project={project}", f"ckpt_path={ckpt}", f"output={out}", *words]
    return export(make_config(tmp_path, overrides, "export"))


def service(tmp_path: Path, project: str, ckpt: Path, *words: str) -> Service:
    cfg = make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}", *words], "serve")
    return Service(cfg)


def model_of(tmp_path: Path, project: str, ckpt: Path, *words: str):
    cfg = make_config(tmp_path, [f"project={project}", f"ckpt_path={ckpt}", *words], "predict")
    return load_trained(cfg, str(ckpt), Serves, "be served")


def upload(client, data: bytes, name: str = "digit.png"):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")})


@pytest.fixture(scope="module")
def mnist(tiny_checkpoint, tmp_path_factory):
    """(checkpoint, its ONNX export) of the tiny mnist run."""
    ckpt = tiny_checkpoint("mnist")
    return ckpt, exported(tmp_path_factory.mktemp("mnist-onnx"), "mnist", ckpt, "max_batch=16")


def test_the_projects_that_can_be_served():
    # Everything that predicts from a file or a text; not the generators, graphs, agents.
    served = ["cifar10", "ddp", "detection", "kws", "mnist", "sentiment", "vit"]
    assert projects_with(Serves) == served


@pytest.mark.parametrize("backend", ["onnx", pytest.param("torch", marks=pytest.mark.slow)])
def test_an_uploaded_image_gets_the_models_top_classes(mnist, tmp_path, backend):
    ckpt, onnx = mnist
    served = service(tmp_path, "mnist", ckpt, f"backend={backend}", f"model_file={onnx}")
    model = model_of(tmp_path, "mnist", ckpt)
    with TestClient(build_app(served)) as client:
        for data in digits(4):
            answer = upload(client, data).json()
            path = tmp_path / "digit.png"
            path.write_bytes(data)
            with torch.inference_mode():
                probs = model(model.read_input(path)).softmax(dim=1)[0]  # as make predict does
            top = probs.topk(5)
            assert [c["name"] for c in answer["classes"]] == [str(i) for i in top.indices.tolist()]
            got = [c["probability"] for c in answer["classes"]]
            np.testing.assert_allclose(got, top.values.numpy(), atol=1e-4)
            assert answer["batch_size"] == 1
        assert client.get("/health").json()["requests"] == 4


def test_metadata_matches_the_checkpoint_and_its_export(mnist, tmp_path):
    ckpt, onnx = mnist
    with TestClient(build_app(service(tmp_path, "mnist", ckpt, f"model_file={onnx}"))) as client:
        meta = client.get("/metadata").json()
    described = json.loads(onnx.with_suffix(".onnx.json").read_text())
    assert meta["project"] == "mnist" and meta["backend"] == "onnx"
    assert meta["checkpoint"] == str(ckpt.resolve()) == described["checkpoint"]
    assert meta["classes"] == described["class_names"] == [str(i) for i in range(10)]
    assert meta["inputs"] == described["inputs"] and meta["outputs"] == described["outputs"]
    assert meta["request"] == "image" and meta["model_file"] == str(onnx)
    run = yaml.safe_load((run_dir_of(ckpt) / "run.yaml").read_text())
    assert meta["commit"]["trained"] == run["git"].get("commit")
    assert meta["batching"] == {"max_batch": 16, "max_wait_ms": 2.0}


def test_every_bad_request_gets_a_4xx_and_a_message_and_the_server_stays_up(mnist, tmp_path):
    ckpt, onnx = mnist
    served = service(tmp_path, "mnist", ckpt, f"model_file={onnx}", "max_body_mb=0.05")
    colour = png(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    with TestClient(build_app(served), raise_server_exceptions=False) as client:
        cases = {
            "json to an image model": (
                client.post("/predict", json={"text": "hi"}),
                415,
                "multipart form field 'file'",
            ),
            "not an image": (
                upload(client, b"GIF89a nothing", "cat.gif"),
                422,
                "cannot read the image cat.gif",
            ),
            "an empty file": (upload(client, b""), 422, "is empty"),
            "no file field": (
                client.post("/predict", files={"photo": ("a.png", digits(1)[0])}),
                422,
                "no file in the field 'file'",
            ),
            "a colour image for a grey model": (upload(client, colour), 422, "colour image"),
            "over max_body_mb": (upload(client, b"\0" * 60_000), 413, "over the limit of 0.05 MB"),
            "no Content-Length": (
                client.post(
                    "/predict",
                    content=iter([b"x"]),
                    headers={"Content-Type": "multipart/form-data; boundary=x"},
                ),
                411,
                "Content-Length",
            ),
            "a form without its boundary": (
                client.post(
                    "/predict",
                    content=b"--x\r\nnonsense",
                    headers={"Content-Type": "multipart/form-data"},
                ),
                400,
                "cannot read the form",
            ),
            "an unknown path": (client.get("/predictions"), 404, "Not Found"),
            "GET on /predict": (client.get("/predict"), 405, "Method Not Allowed"),
        }
        for what, (response, status, message) in cases.items():
            assert response.status_code == status, what
            assert message in response.json()["error"], what
        assert client.get("/health").json()["status"] == "ok"
        assert upload(client, digits(1)[0]).status_code == 200


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(mnist, tmp_path):
    ckpt, onnx = mnist
    images = digits(8)
    served = service(
        tmp_path, "mnist", ckpt, f"model_file={onnx}", "max_batch=8", "max_wait_ms=500"
    )
    with TestClient(build_app(served)) as client:
        alone = [upload(client, data).json()["classes"] for data in images]
        answers: dict[int, dict] = {}

        def send(i: int) -> None:
            answers[i] = upload(client, images[i]).json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(a["batch_size"] for a in answers.values()) > 1  # they met in a batch
    for i, answer in answers.items():  # and each request got its own image's answer
        assert [c["name"] for c in answer["classes"]] == [c["name"] for c in alone[i]]
        got, expected = ([c["probability"] for c in x] for x in (answer["classes"], alone[i]))
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_request_whose_client_hung_up_leaves_its_batch_and_the_others_are_answered():
    seen = []

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        seen.append(x.tolist())
        return [x]

    async def scenario():
        batcher = Batcher(run, lambda items: (torch.stack([i[0] for i in items]),), 8, 0.2)
        batcher.start()
        kept = asyncio.ensure_future(batcher.submit((torch.tensor(1.0),)))
        gone = asyncio.ensure_future(batcher.submit((torch.tensor(2.0),)))
        await asyncio.sleep(0.05)  # both queued; the batch waits 0.2 s for company
        gone.cancel()  # its client hung up (the server cancels the request's task)
        (out,), size = await kept
        assert float(out) == 1.0 and size == 1 and seen == [[1.0]]
        await batcher.stop()

    asyncio.run(scenario())


def test_the_batcher_sizes_batches_answers_in_order_and_drains_on_stop():
    sizes = []

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        sizes.append(len(x))
        if (x < 0).any():
            raise RuntimeError("the backend failed")
        return [x * 2]

    async def scenario():
        batcher = Batcher(run, lambda items: (torch.stack([i[0] for i in items]),), 8, 0.05)
        batcher.start()
        answers = await asyncio.gather(
            *(batcher.submit((torch.tensor(float(i)),)) for i in range(20))
        )
        assert [float(out[0]) for out, _ in answers] == [2.0 * i for i in range(20)]
        assert sizes == [8, 8, 4] and [size for _, size in answers] == [8] * 16 + [4] * 4
        with pytest.raises(RuntimeError, match="the backend failed"):  # that batch only
            await batcher.submit((torch.tensor(-1.0),))
        queued = [asyncio.ensure_future(batcher.submit((torch.tensor(1.0),))) for _ in range(3)]
        await asyncio.sleep(0)  # submitted, not yet run
        await batcher.stop()  # answers what was queued, then ends
        assert all(float(q.result()[0][0]) == 2.0 for q in queued)
        assert batcher.requests == 23

    asyncio.run(scenario())


def test_a_text_project_takes_json_and_refuses_what_it_cannot_read(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("sentiment")
    onnx = exported(tmp_path, "sentiment", ckpt, "max_batch=16")
    model = model_of(tmp_path, "sentiment", ckpt)
    vocab = json.loads(model.data_spec.tokenizer)["model"]["vocab"]
    words = [w for w in vocab if w.isalpha() and not w.startswith("[")]
    texts = [" ".join(words[i : i + n]) for i, n in ((0, 3), (5, 9), (20, 1))]
    answers = {}
    for backend in ("torch", "onnx"):
        with TestClient(
            build_app(
                service(tmp_path, "sentiment", ckpt, f"backend={backend}", f"model_file={onnx}")
            )
        ) as client:
            answers[backend] = [client.post("/predict", json={"text": t}).json() for t in texts]
            bad = {
                "empty": (client.post("/predict", json={"text": "  "}), 422, "the text is empty"),
                "no text key": (client.post("/predict", json={"words": "x"}), 422, '"text" string'),
                "not JSON": (
                    client.post(
                        "/predict", content=b"{text", headers={"Content-Type": "application/json"}
                    ),
                    400,
                    "not valid JSON",
                ),
                "a file": (upload(client, b"abc", "a.txt"), 415, 'send JSON {"text"'),
                "unknown words": (
                    client.post("/predict", json={"text": "qqqq zzzz"}),
                    422,
                    "vocabulary",
                ),
            }
            for what, (response, status, message) in bad.items():
                assert response.status_code == status, what
                assert message in response.json()["error"], what
    for torch_answer, onnx_answer in zip(answers["torch"], answers["onnx"], strict=True):
        assert [c["name"] for c in torch_answer["classes"]] == [
            c["name"] for c in onnx_answer["classes"]
        ]
        np.testing.assert_allclose(
            [c["probability"] for c in torch_answer["classes"]],
            [c["probability"] for c in onnx_answer["classes"]],
            atol=1e-4,
        )


@pytest.mark.slow
def test_detection_answers_boxes_in_the_uploaded_images_own_pixels(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("detection")
    onnx = exported(tmp_path, "detection", ckpt)
    image = np.random.default_rng(1).integers(0, 256, (60, 100, 3), dtype=np.uint8)  # H 60, W 100
    path = tmp_path / "wide.png"
    path.write_bytes(png(image))
    # Inference-time options: every box NMS keeps, however unsure a detector of a few steps is.
    show_all = ["model.show_threshold=0.0", "model.score_threshold=0.0"]
    with TestClient(
        build_app(service(tmp_path, "detection", ckpt, f"model_file={onnx}", *show_all))
    ) as client:
        answer = upload(client, path.read_bytes(), "wide.png").json()
    assert (answer["width"], answer["height"]) == (100, 60) and answer["objects"]
    boxes = np.array([o["box"] for o in answer["objects"]])
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 100).all() and (boxes[:, [1, 3]] <= 60).all()
    # The same boxes as `make predict` draws, through the eager model and its own NMS.
    model = model_of(tmp_path, "detection", ckpt, *show_all)
    with torch.inference_mode():
        printed = model.predict_file(path, tmp_path / "drawn.png").splitlines()
    assert printed[0].startswith(f"{len(answer['objects'])} objects")
    for line, found in zip(printed[1:], answer["objects"], strict=False):
        name, score, *box = line.split()
        assert name == found["class"] and abs(float(score) - found["score"]) < 0.006
        np.testing.assert_allclose([float(v) for v in box], found["box"], atol=0.6)


@pytest.mark.slow
def test_keyword_spotting_takes_an_audio_upload(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("kws")
    served = service(tmp_path, "kws", ckpt, "backend=torch")
    waves, _ = synthetic_speech(1, 3, 16000, 16000, seed=0)
    clip = write_wav(tmp_path / "word.wav", waves[0], 16000, channels=2)
    with TestClient(build_app(served)) as client:
        answer = upload(client, clip.read_bytes(), "word.wav").json()
        assert (
            len(answer["classes"]) == 5 and answer["classes"][0]["name"] in served.spec.class_names
        )
        bad = upload(client, b"RIFF not really", "x.wav")
        assert bad.status_code == 422 and "cannot read the audio file x.wav" in bad.json()["error"]
        # 44101 Hz would take a 2.8 GB resampling kernel: refused, not attempted.
        odd = write_wav(tmp_path / "odd.wav", waves[0][:4000], 44101)
        bad = upload(client, odd.read_bytes(), "odd.wav")
        assert bad.status_code == 422 and "sampled at 44101 Hz" in bad.json()["error"]
        # A client's file name reaches no path: only its suffix's letters are kept.
        weird = upload(client, clip.read_bytes(), "../../etc/x.w\x00av")
        assert weird.status_code in (200, 422)
        assert client.get("/health").json()["status"] == "ok"


@pytest.mark.slow
def test_the_onnx_backend_serves_only_its_checkpoints_current_export(
    mnist, tiny_checkpoint, tmp_path
):
    ckpt, onnx = mnist
    with pytest.raises(
        UserError, match=r"does not exist: run `make export PROJECT=mnist ckpt_path="
    ):
        service(tmp_path, "mnist", ckpt, f"model_file={tmp_path / 'none.onnx'}")
    with pytest.raises(UserError, match="larger than the batches the export was checked at"):
        service(tmp_path, "mnist", ckpt, f"model_file={onnx}", "max_batch=32")
    other = tiny_checkpoint("cifar10")
    with pytest.raises(UserError, match="of project cifar10, not onnx of mnist"):
        service(tmp_path, "mnist", ckpt, f"model_file={exported(tmp_path, 'cifar10', other)}")
    copy = tmp_path / "copy.ckpt"
    shutil.copy(ckpt, copy)
    with pytest.raises(UserError, match="was exported from .* not from"):
        service(tmp_path, "mnist", copy, f"model_file={onnx}")
    stale = tmp_path / "stale.onnx"
    shutil.copy(onnx, stale)
    shutil.copy(onnx.with_suffix(".onnx.json"), stale.with_suffix(".onnx.json"))
    before = ckpt.stat().st_mtime - 60  # written before the checkpoint (which stays as it is)
    os.utime(stale, (before, before))
    with pytest.raises(UserError, match="is newer than its export"):
        service(tmp_path, "mnist", ckpt, f"model_file={stale}")


def test_projects_and_settings_that_cannot_be_served_are_refused(mnist, tmp_path):
    ckpt, onnx = mnist
    with pytest.raises(UserError, match="'gan' cannot be served; the projects that can: .*mnist"):
        service(tmp_path, "gan", ckpt)
    with pytest.raises(UserError, match="backend=tensorrt is not one of onnx, torch"):
        service(tmp_path, "mnist", ckpt, "backend=tensorrt")
    with pytest.raises(UserError, match="max_batch=0 must be a whole number from 1 to 4096"):
        service(tmp_path, "mnist", ckpt, "max_batch=0", f"model_file={onnx}")
    with pytest.raises(UserError, match="port=70000 must be a whole number from 1 to 65535"):
        service(tmp_path, "mnist", ckpt, "port=70000", f"model_file={onnx}")
    with pytest.raises(UserError, match="max_body_mb=0 would refuse every request"):
        service(tmp_path, "mnist", ckpt, "max_body_mb=0", f"model_file={onnx}")


def test_text_items_of_different_lengths_batch_padded_and_oversize_ones_are_refused(
    tiny_checkpoint, tmp_path
):
    trained = model_of(tmp_path, "sentiment", tiny_checkpoint("sentiment"))
    # A transformer encoder under the trained run's tokenizer: its graph takes any length.
    model = instantiate_model(
        make_config(tmp_path, ["project=sentiment", "encoder=transformer"]).model
    )
    model.use_data(trained.data_spec)
    spec = model.eval().export_spec()
    assert spec.inputs[0].shape == ["batch", "length"]
    short, long = torch.tensor([2, 7]), torch.tensor([2, 7, 8, 9, 10])
    tokens, lengths = spec.collate([(short, torch.tensor(2)), (long, torch.tensor(5))])
    assert tokens.tolist() == [[2, 7, 0, 0, 0], [2, 7, 8, 9, 10]] and lengths.tolist() == [2, 5]
    (alone, _) = spec.collate([(short, torch.tensor(2))])
    assert alone.tolist() == [[2, 7, 0]]  # padded to the graph's shortest length, 3
    longest = spec.limits["length"][1]
    with pytest.raises(
        UserError, match=f"tokens has {longest + 1} along length: the graph takes at most {longest}"
    ):
        spec.check_item((torch.ones(longest + 1, dtype=torch.long), torch.tensor(longest + 1)))


# --- the real process ----------------------------------------------------------------------------


def start(tmp_path: Path, *words: str) -> tuple[subprocess.Popen, int]:
    """`make serve` with `words`, on a free port; returns once /health answers."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PROJECT", "ARGS")
    }
    server = subprocess.Popen(
        ["make", "-s", f"VENV={Path(sys.executable).parents[1]}", "serve", *words, f"port={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server, port
        except OSError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError(f"the server did not start: {server.communicate()}")


def post_file(port: int, data: bytes, name: str) -> dict:
    body, content_type = multipart(data, name)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_make_serve_answers_and_stops_gracefully_on_sigterm(mnist):
    ckpt, onnx = mnist
    # Each request waits up to 1.5 s for company: long enough to stop the server under one.
    words = [f"ckpt_path={ckpt}", f"model_file={onnx}", "max_batch=8", "max_wait_ms=1500"]
    server, port = start(ROOT, "PROJECT=mnist", *words)
    late: dict = {}
    try:
        answers = [post_file(port, data, "digit.png") for data in digits(3)]
        assert all(len(a["classes"]) == 5 for a in answers)
        sender = threading.Thread(
            target=lambda: late.update(post_file(port, digits(1)[0], "x.png"))
        )
        sender.start()
        time.sleep(0.5)  # the request is in the batcher, waiting
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # as `docker stop` or Ctrl-C would
        out, err = server.communicate(timeout=60)
    sender.join(timeout=30)
    assert len(late["classes"]) == 5  # the request in flight was answered before the exit
    assert "http://127.0.0.1:" in out and "stopped after answering 4 requests" in out
    assert server.returncode == -signal.SIGTERM  # make got the signal too, as from Ctrl-C
    assert "stopped by SIGTERM" in err and "Traceback" not in err


@pytest.mark.slow
def test_make_serve_without_an_export_says_how_to_make_one(mnist, tmp_path):
    ckpt, _ = mnist
    result = subprocess.run(
        [
            "make",
            "-s",
            f"VENV={Path(sys.executable).parents[1]}",
            "serve",
            "PROJECT=mnist",
            f"ckpt_path={ckpt}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: backend=onnx serves the graph `make export` writes" in result.stderr


# --- the page, in a real browser -----------------------------------------------------------------

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
DRIVER = shutil.which("chromedriver")


class WebDriver:
    """The few W3C WebDriver commands the page test needs, over HTTP to chromedriver."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        options = {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,900"],
            "binary": CHROMIUM,
        }
        self.session = self.call(
            "POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        )["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def do(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def find(self, css: str) -> str:
        found = self.do("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def wait_for(self, css: str, seconds: float = 30) -> str:
        deadline = time.time() + seconds
        while True:
            try:
                return self.find(css)
            except urllib.error.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no chromium and chromedriver (Debian: apt install chromium chromium-driver)",
)
def test_the_page_shows_the_top_classes_of_an_uploaded_image_in_a_browser(mnist, tmp_path):
    ckpt, onnx = mnist
    image = tmp_path / "digit.png"
    image.write_bytes(digits(1)[0])
    server, port = start(ROOT, "PROJECT=mnist", f"ckpt_path={ckpt}", f"model_file={onnx}")
    driver_port = free_port()
    driver = subprocess.Popen(
        [DRIVER, f"--port={driver_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                browser = WebDriver(driver_port)
                break
            except OSError:
                time.sleep(0.1)
        browser.do("POST", "/url", {"url": f"http://127.0.0.1:{port}/"})
        browser.wait_for("input[type=file]:not([hidden])")
        browser.do("POST", f"/element/{browser.find('#file')}/value", {"text": str(image)})
        browser.do("POST", f"/element/{browser.find('#send')}/click", {})
        rows = browser.do("GET", f"/element/{browser.wait_for('#classes')}/text")
        expected = post_file(port, image.read_bytes(), "digit.png")["classes"][0]
        assert rows.splitlines()[0] == expected["name"]  # the most probable class first
        assert f"{100 * expected['probability']:.1f}%" in rows
        title = browser.do("GET", "/title")
        assert title.startswith("mnist")
        png_data = browser.do("GET", "/screenshot")
        assert len(png_data) > 1000
        browser.do("DELETE", "")
    finally:
        driver.kill()
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=60)
