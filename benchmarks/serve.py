"""A bounded load test of `make serve`: `make bench-serve [PROJECT=mnist] [ARGS='--seconds 10']`.

For each backend (torch, onnx) and batching setting (max_batch 1: none; and --batch), a server
(`python -m common.serve`, its own process) is started on 127.0.0.1 on a free port, `--clients`
concurrent clients send POST /predict requests back to back for `--seconds` seconds over
keep-alive connections, and the server is stopped with SIGTERM. Printed per setting: requests
per second, latency percentiles (p50, p95, p99, from send to the last byte of the answer),
failed requests and the mean batch the server ran. Nothing listens beyond 127.0.0.1, and every
run ends by itself.

The checkpoint is `--ckpt` (default: the project's newest last.ckpt); the ONNX graph is exported
from it into a temporary folder first. The request is one input of the project's kind: a PNG of
the model's image size, a one-second WAV, or a sentence of words from the model's vocabulary.
The clients share the machine with the server: on 2 cores, they take some of its CPU.
"""

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(data: bytes, filename: str, field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body holding one file: (body, its Content-Type)."""
    boundary = "benchserve" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def example_request(model) -> tuple[bytes, str]:
    """(body, content type) of one typical request to `model`'s server."""
    spec, data = model.export_spec(), model.data_spec
    gen = np.random.default_rng(0)
    if spec.request == "text":
        vocab = json.loads(data.tokenizer)["model"]["vocab"]
        words = [w for w in vocab if w.isalpha() and not w.startswith("[")][:12]
        return json.dumps({"text": " ".join(words)}).encode(), "application/json"
    if spec.request == "audio":
        import soundfile as sf

        wave = 0.1 * gen.standard_normal(data.num_samples).astype(np.float32)
        buffer = io.BytesIO()
        sf.write(buffer, wave, data.sample_rate, format="WAV", subtype="PCM_16")
        return multipart(buffer.getvalue(), "clip.wav")
    from PIL import Image

    size, grey = data.image_size, data.in_chans == 1
    pixels = gen.integers(0, 256, (size, size) if grey else (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return multipart(buffer.getvalue(), "image.png")


def http_request(body: bytes, content_type: str) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def one_client(port: int, request: bytes, until: float, stats: dict) -> None:
    """Send `request` back to back on one keep-alive connection until `until`."""
    reader = writer = None
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if found is None:  # not an answer this client can frame: count it, reconnect
                raise OSError("a response without Content-Length")
            length = int(found.group(1))
            body = await reader.readexactly(length)
            stats["latency"].append(time.perf_counter() - start)
            if head.split(b" ", 2)[1] != b"200":
                stats["errors"].append(head.split(b"\r\n", 1)[0].decode())
            else:
                stats["batch"].append(json.loads(body)["batch_size"])
        except (OSError, asyncio.IncompleteReadError) as err:
            stats["errors"].append(type(err).__name__)
            writer = None
    if writer is not None:
        writer.close()


async def load(port: int, request: bytes, clients: int, seconds: float) -> dict:
    stats = {"latency": [], "errors": [], "batch": []}
    until = time.perf_counter() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(one_client(port, request, until, stats) for _ in range(clients)))
    stats["seconds"] = time.perf_counter() - start
    return stats


SERVERS = {"fastapi": "common.serve", "litserve": "benchmarks.serve_litserve"}


def start_server(args, server: str, backend: str, max_batch: int, model_file, port: int):
    words = [f"project={args.project}", f"ckpt_path={args.ckpt}", f"backend={backend}"]
    words += [f"max_batch={max_batch}", f"max_wait_ms={args.wait_ms}", f"port={port}"]
    words += [f"threads={args.threads}"]
    if model_file is not None:
        words.append(f"model_file={model_file}")
    log = open(Path(args.tmp, f"server-{port}.log"), "w+")  # noqa: SIM115 (read at the stop)
    server = subprocess.Popen(
        [sys.executable, "-m", SERVERS[server], *words],
        cwd=REPO,
        stdout=log,  # a file, not a pipe: a server that writes a lot never blocks on it
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: LitServe's workers stop with it
    )
    server.log = log
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"error: the server stopped: {log.read().strip()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit("error: the server did not answer /health within 120 s")


def stop_server(server) -> str:
    """SIGTERM to the server's process group (a graceful stop), SIGKILL after 60 s; its output."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    try:  # whatever of the group outlived its leader
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.log.seek(0)
    return server.log.read()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(stats: dict) -> dict:
    latency = [1000 * t for t in stats["latency"]]
    return {
        "requests": len(latency),
        "req_per_s": len(latency) / stats["seconds"],
        "p50_ms": percentile(latency, 50),
        "p95_ms": percentile(latency, 95),
        "p99_ms": percentile(latency, 99),
        "errors": len(stats["errors"]),
        "mean_batch": statistics.fmean(stats["batch"]) if stats["batch"] else float("nan"),
    }


def prepare(args) -> tuple[object, Path]:
    """The model of --ckpt (resolved), and its ONNX export in a temporary folder."""
    from benchmarks.stack import compose_config
    from common.capabilities import Serves
    from common.export import export
    from common.predict import load_trained
    from common.runs import find_last_checkpoint

    if args.ckpt == "last":
        args.ckpt = find_last_checkpoint(str(REPO / "logs"), args.project)
    args.ckpt = str(Path(args.ckpt).resolve())
    tmp = Path(args.tmp)
    overrides = [f"project={args.project}", f"ckpt_path={args.ckpt}"]
    model = load_trained(compose_config(tmp, overrides, "serve"), args.ckpt, Serves, "be served")
    onnx = tmp / "model.onnx"
    words = [f"output={onnx}", f"max_batch={max(args.batch, 2)}", "parity_data=false"]
    export(compose_config(tmp, [*overrides, *words], "export"))
    return model, onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=os.environ.get("PROJECT") or "mnist")
    parser.add_argument("--ckpt", default="last", help="a checkpoint, or last")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=16, help="max_batch of the batching runs")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="max_wait_ms of the server")
    parser.add_argument("--threads", type=int, default=0, help="the server's backend threads")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--servers", default="fastapi", help="fastapi (make serve), litserve")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    from common.errors import UserError

    with TemporaryDirectory() as tmp:
        args.tmp = tmp
        try:
            model, onnx = prepare(args)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None
        body, content_type = example_request(model)
        request = http_request(body, content_type)
        cpu = cpu_name()
        print(f"{args.project}: {args.ckpt}")
        print(
            f"{args.clients} clients for {args.seconds:g} s each run, {len(body)} B requests, "
            f"on 127.0.0.1; {os.cpu_count()} cores ({cpu}), torch {torch.__version__}"
        )
        header = (
            f"{'server':<10}{'backend':<8}{'max_batch':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
        )
        print(header + f"{'p99 ms':>9}{'errors':>8}{'batch':>7}")
        rows = []
        settings = [
            (server, backend, max_batch)
            for server in args.servers.split(",")
            for backend in args.backends.split(",")
            for max_batch in sorted({1, args.batch})
        ]
        for server_name, backend, max_batch in settings:
            port = free_port()
            model_file = onnx if backend == "onnx" else None
            server = start_server(args, server_name, backend, max_batch, model_file, port)
            try:
                asyncio.run(load(port, request, 2, 1.0))  # warm-up, not counted
                figures = summarize(asyncio.run(load(port, request, args.clients, args.seconds)))
            finally:
                log = stop_server(server)
            if server_name == "fastapi" and "stopped after answering" not in log:
                print(log)
            rows.append(
                {"server": server_name, "backend": backend, "max_batch": max_batch, **figures}
            )
            print(
                f"{server_name:<10}{backend:<8}{max_batch:>10}{figures['req_per_s']:>9.0f}"
                f"{figures['p50_ms']:>9.1f}{figures['p95_ms']:>9.1f}{figures['p99_ms']:>9.1f}"
                f"{figures['errors']:>8}{figures['mean_batch']:>7.1f}",
                flush=True,
            )
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        if any(r["errors"] for r in rows):
            raise SystemExit("error: some requests failed (see the errors column)")


if __name__ == "__main__":
    main()
