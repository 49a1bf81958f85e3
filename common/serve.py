"""Serve a trained model over HTTP: `make serve PROJECT=<name> ckpt_path=<file|last> [backend=onnx|torch]`.

Any project whose model can be exported and reads requests (the `Serves` capability: image
classifiers, object detectors, text classifiers, keyword spotters) is served by this one module:

    POST /predict    an image or audio file as the multipart form field `file`, or JSON {"text": ...}
    GET  /health     {"status": "ok"}; 503 once the server is stopping
    GET  /metadata   project, classes, the graph's inputs and outputs, checkpoint, git commits
    GET  /           a page to try it from a browser

backend=onnx runs the graph `make export` wrote beside the checkpoint with onnxruntime (checked
to belong to this checkpoint, and to be newer than it); backend=torch runs the model eagerly.
Requests that arrive together run as one batch (`Batcher`). A bad request gets a 4xx and
{"error": "..."}; nothing a client sends stops the server. SIGTERM or Ctrl-C stop it gracefully:
no new connections, the requests in flight answered, then exit.
"""

import asyncio
import json
import re
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from common.capabilities import Serves, require_project
from common.entry import entry
from common.errors import UserError
from common.export import as_list, load_onnx
from common.predict import checkpoint_path, load_trained
from common.runs import git_state, run_dir_of

PAGE = Path(__file__).with_name("serve.html")
BACKENDS = ("onnx", "torch")


class RequestError(Exception):
    """A request the server cannot answer: its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Batcher:
    """Requests that arrive together -> one call of `run` on a batch.

    The first request of a batch waits at most `max_wait` seconds for others to join, and a
    batch holds at most `max_batch`. One worker thread runs the batches one after another (the
    backend uses the cores itself); the event loop keeps reading requests meanwhile. Each
    request gets its own outputs back, whatever its place in the batch.
    """

    def __init__(self, run, collate, max_batch: int, max_wait: float):
        self.run, self.collate = run, collate
        self.max_batch, self.max_wait = max_batch, max_wait
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="batch")
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self.loop())

    async def submit(self, inputs: tuple[torch.Tensor, ...]) -> tuple[tuple, int]:
        """One request's inputs (no batch dimension) -> (its outputs, the batch's size)."""
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, done))
        return await done

    async def gather(self) -> list | None:
        """The next batch: the first request, then those that come within max_wait; None at
        the end (the queue is first-in first-out, so every request before the end is run)."""
        first = await self.queue.get()
        if first is None:
            return None
        batch, loop = [first], asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if self.queue.empty():
                left = deadline - loop.time()
                if left <= 0:
                    break
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=left)
                if not done:  # a get cancelled before it resolved takes no item
                    getter.cancel()
                    break
                item = getter.result()
            else:
                item = self.queue.get_nowait()
            if item is None:
                self.queue.put_nowait(None)  # the end: after this batch
                break
            batch.append(item)
        return batch

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self.gather()) is not None:
            batch = [(inputs, done) for inputs, done in batch if not done.cancelled()]
            if not batch:  # every client hung up while waiting
                continue
            try:
                inputs = self.collate([inputs for inputs, _ in batch])
                outputs = await loop.run_in_executor(self.worker, self.run, *inputs)
                answers = [tuple(out[i] for out in outputs) for i in range(len(batch))]
            except Exception as err:  # a backend failure fails this batch, not the server
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
                continue
            self.batches += 1
            self.requests += len(batch)
            for answer, (_, done) in zip(answers, batch, strict=True):
                if not done.done():  # a client that hung up meanwhile has a cancelled one
                    done.set_result((answer, len(batch)))

    async def stop(self) -> None:
        """Answer what is queued, then end the loop."""
        if self.task is not None:
            await self.queue.put(None)
            await self.task
        self.worker.shutdown()


def onnx_file(cfg: DictConfig, ckpt_path: Path) -> tuple[Path, dict]:
    """The exported graph to serve and its description, checked to be this checkpoint's."""
    path = (
        Path(str(cfg.model_file)).expanduser() if cfg.model_file else ckpt_path.with_suffix(".onnx")
    )
    export = f"make export PROJECT={cfg.name} ckpt_path={ckpt_path}"
    if not path.is_file():
        raise UserError(
            f"backend=onnx serves the graph `make export` writes, and {path} does not exist: "
            f"run `{export}` first (or serve the model itself: backend=torch)"
        )
    described = path.with_suffix(path.suffix + ".json")
    if not described.is_file():
        raise UserError(
            f"{path} has no description beside it ({described.name}): `{export}` writes both"
        )
    meta = json.loads(described.read_text())
    if meta.get("project") != cfg.name or meta.get("format") != "onnx":
        raise UserError(
            f"{path} is a {meta.get('format')} export of project {meta.get('project')}, not onnx of {cfg.name}"
        )
    if Path(meta.get("checkpoint", "")) != ckpt_path.resolve():
        raise UserError(
            f"{path} was exported from {meta.get('checkpoint')}, not from {ckpt_path}: `{export}`"
        )
    if ckpt_path.stat().st_mtime > path.stat().st_mtime:
        raise UserError(f"{ckpt_path} is newer than its export {path}: `{export} overwrite=true`")
    if cfg.max_batch > meta.get("max_batch", 0):
        raise UserError(
            f"max_batch={cfg.max_batch} is larger than the batches the export was checked at "
            f"({meta.get('max_batch')}): export with max_batch={cfg.max_batch}, or serve smaller batches"
        )
    return path, meta


def backend_runner(cfg: DictConfig, spec, onnx: Path | None):
    """run: batched inputs -> outputs, on the CPU; onnxruntime on the file `onnx` if given."""
    if onnx is not None:
        # No spinning: between batches its idle threads would take the cores the event loop
        # needs to read the next requests.
        return load_onnx(onnx, threads=cfg.threads, spin=False)
    module = spec.eager
    device = next(module.parameters()).device

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return [y.cpu() for y in as_list(module(*(x.to(device) for x in inputs)))]

    return run


def trained_commit(ckpt_path: Path) -> str | None:
    """The git commit the checkpoint's run was trained at (its run.yaml), if known."""
    import yaml

    run_file = run_dir_of(ckpt_path) / "run.yaml"
    try:
        return yaml.safe_load(run_file.read_text()).get("git", {}).get("commit")
    except (OSError, AttributeError, yaml.YAMLError):
        return None


def check_settings(cfg: DictConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise UserError(f"backend={cfg.backend} is not one of {', '.join(BACKENDS)}")
    for key, low, high in (("max_batch", 1, 4096), ("port", 1, 65535), ("threads", 0, 1024)):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise UserError(f"{key}={value} must be a whole number from {low} to {high}")
    for key, positive in (("max_wait_ms", False), ("max_body_mb", True)):
        value = cfg[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise UserError(f"{key}={value} must be a number >= 0")
        if positive and value == 0:
            raise UserError(f"{key}=0 would refuse every request: give a size in MB")


class Service:
    """The model, its exported graph's description and the batcher behind the endpoints."""

    def __init__(self, cfg: DictConfig):
        check_settings(cfg)
        require_project(cfg.name, Serves, "be served")
        self.ckpt_path = Path(checkpoint_path(cfg))
        # The export checked before the model loads: the cheap mistakes first.
        self.model_file = onnx_file(cfg, self.ckpt_path)[0] if cfg.backend == "onnx" else None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = load_trained(cfg, str(self.ckpt_path), Serves, "be served")
        self.spec = self.model.export_spec()
        if self.spec.request is None:
            raise UserError(f"project '{cfg.name}' exports a graph but takes no requests to serve")
        self.run = backend_runner(cfg, self.spec, self.model_file)
        self.cfg = cfg
        self.limit = int(cfg.max_body_mb * 1_000_000)
        self.batcher: Batcher | None = None
        self.stopping = False
        self.started = time.time()
        self.commits = {
            "trained": trained_commit(self.ckpt_path),
            "serving": git_state().get("commit"),
        }

    def metadata(self) -> dict:
        import onnxruntime

        return {
            "project": self.cfg.name,
            "request": self.spec.request,
            "classes": self.spec.class_names,
            **{
                k: v
                for k, v in self.spec.description().items()
                if k not in ("class_names", "request")
            },
            "backend": self.cfg.backend,
            "model_file": str(self.model_file) if self.model_file else None,
            "checkpoint": str(self.ckpt_path.resolve()),
            "commit": self.commits,
            "batching": {"max_batch": self.cfg.max_batch, "max_wait_ms": self.cfg.max_wait_ms},
            "max_body_mb": self.cfg.max_body_mb,
            "versions": {"torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__},
        }

    async def read(self, request) -> tuple[object, str | None]:
        """The request's payload: (the text, None) or (the file's bytes, its name)."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise RequestError(411, "send the request with a Content-Length header")
        if int(length) > self.limit:
            raise RequestError(
                413,
                f"the request is {int(length) / 1e6:.1f} MB, over the limit of "
                f"{self.cfg.max_body_mb} MB (the server's max_body_mb)",
            )
        kind = self.spec.request
        ctype = request.headers.get("content-type", "")
        if kind == "text":
            if not ctype.startswith("application/json"):
                raise RequestError(
                    415, 'send JSON {"text": "..."} with Content-Type: application/json'
                )
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
                raise RequestError(400, f"the body is not valid JSON: {err}") from None
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str):
                raise RequestError(422, 'the JSON needs a "text" string: {"text": "..."}')
            if not text.strip():
                raise RequestError(422, "the text is empty: send the text to classify")
            return text, None
        if not ctype.startswith("multipart/form-data"):
            raise RequestError(
                415,
                f"send the {kind} file as the multipart form field 'file' "
                f"(curl -F file=@<{kind} file>); got Content-Type: {ctype or 'none'}",
            )
        from starlette.datastructures import UploadFile

        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as err:  # python-multipart's or starlette's parse errors
            raise RequestError(400, f"cannot read the form: {err}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError(
                422, f"the form has no file in the field 'file' (the {kind} to read)"
            )
        data = await upload.read()
        if not data:
            raise RequestError(422, f"the uploaded file {upload.filename or ''} is empty")
        return data, upload.filename or "upload"

    def prepare(self, payload, filename: str | None) -> tuple[tuple, object]:
        """The payload -> the graph's inputs for it and the answer's context (in a thread:
        decoding an image or audio file takes milliseconds)."""
        try:
            if filename is None:
                inputs, context = self.model.read_request(payload)
            else:
                inputs, context = self.read_file(payload, filename)
            self.spec.check_item(inputs)
            return inputs, context
        except UserError as err:
            raise RequestError(422, str(err)) from None

    def read_file(self, payload: bytes, filename: str) -> tuple[tuple, object]:
        """The project's own file reader, as `make predict` uses it, on the upload written to a
        private temporary folder; its messages name the client's file."""
        # The suffix kept (audio readers look at it), nothing else of the client's name.
        suffix = re.sub(r"[^A-Za-z0-9]", "", Path(filename).suffix)[:8]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "upload" + (f".{suffix}" if suffix else ""))
            path.write_bytes(payload)
            try:
                return self.model.read_request(path)
            except UserError as err:
                raise UserError(str(err).replace(str(path), filename)) from None
            except (ValueError, OSError, RuntimeError) as err:  # a decoder's own complaint
                raise UserError(f"cannot read {filename}: {err}") from None

    async def predict(self, request) -> dict:
        from starlette.concurrency import run_in_threadpool

        payload, filename = await self.read(request)
        inputs, context = await run_in_threadpool(self.prepare, payload, filename)
        outputs, size = await self.batcher.submit(inputs)
        return {**self.model.answer(outputs, context), "batch_size": size}


def build_app(service: Service):
    """The FastAPI app of `service`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(app):
        cfg = service.cfg
        service.batcher = Batcher(
            service.run, service.spec.collate, cfg.max_batch, cfg.max_wait_ms / 1000
        )
        service.batcher.start()
        yield
        service.stopping = True
        await service.batcher.stop()
        batcher = service.batcher
        print(f"stopped after answering {batcher.requests} requests in {batcher.batches} batches")

    app = FastAPI(title=f"{service.cfg.name} ({service.cfg.backend})", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):  # 404, 405: in the same shape
        return error(err.status_code, str(err.detail))

    @app.post("/predict")
    async def predict(request: Request):
        if service.stopping:
            return error(503, "the server is stopping")
        try:
            return await service.predict(request)
        except RequestError as err:
            return error(err.status, err.message)
        except Exception as err:  # a bug, or the backend failing: this request only
            return error(500, f"{type(err).__name__}: {err}")

    @app.get("/health")
    async def health():
        if service.stopping:
            return error(503, "the server is stopping")
        batcher = service.batcher
        return {
            "status": "ok",
            "uptime_s": round(time.time() - service.started, 1),
            "requests": batcher.requests if batcher else 0,
            "batches": batcher.batches if batcher else 0,
        }

    @app.get("/metadata")
    async def metadata():
        return service.metadata()

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    return app


def server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling the service when a stop begins: /health answers 503 while
        the requests in flight finish (a load balancer stops sending new ones)."""

        def __init__(self, config, service: Service):
            super().__init__(config)
            self.service = service

        def handle_exit(self, sig, frame) -> None:
            self.service.stopping = True
            super().handle_exit(sig, frame)

    return Server


def check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot listen on {host}:{port} ({err.strerror}): choose another port="
            ) from None


def serve(cfg: DictConfig) -> None:
    import uvicorn

    service = Service(cfg)
    check_port(cfg.host, cfg.port)
    Server = server_class()
    app = build_app(service)
    what = f"onnxruntime on {service.model_file}" if service.model_file else "the model (torch)"
    url = f"http://{'127.0.0.1' if cfg.host == '0.0.0.0' else cfg.host}:{cfg.port}"
    print(f"serving {cfg.name} from {service.ckpt_path} with {what}")
    print(f"batches of up to {cfg.max_batch}, waiting up to {cfg.max_wait_ms} ms for company")
    print(f"{url}  (POST /predict, GET /health, GET /metadata; a page at {url}/)  Ctrl-C stops")
    sys.stdout.flush()
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        access_log=cfg.access_log,
        timeout_graceful_shutdown=30,  # requests in flight get this long to finish
    )
    Server(config, service).run()  # a signal that stopped it is raised again here


@entry("serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
