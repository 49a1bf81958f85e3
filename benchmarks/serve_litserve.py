"""The same model behind LitServe instead of `make serve`'s FastAPI server, for the comparison
in `make bench-serve ARGS='--servers fastapi,litserve'` (LitServe is not a dependency:
`pip install litserve==0.2.19` first).

    python -m benchmarks.serve_litserve project=mnist ckpt_path=<file> backend=onnx max_batch=16 port=8001

Everything but the HTTP layer is `common.serve`'s: the checkpoint checks, the request reading
(`Service.prepare`), the batch (`ExportSpec.collate`), the backend, the answer. LitServe
batches for you (`max_batch_size`, `batch_timeout`) in a worker process it feeds through queues.
"""

import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import litserve as ls
from fastapi import Request

from benchmarks.stack import compose_config
from common.serve import Service


class ProjectAPI(ls.LitAPI):
    def __init__(self, words: list[str], **kwargs):
        super().__init__(**kwargs)
        self.words = words

    def setup(self, device):
        with TemporaryDirectory() as tmp:  # in LitServe's worker process
            self.service = Service(compose_config(Path(tmp), self.words, "serve"))

    def decode_request(self, request: Request):  # LitServe hands over the parsed form
        upload = request["file"]
        return self.service.prepare(upload.file.read(), upload.filename)

    def batch(self, items):
        return items

    def predict(self, items):
        single = not isinstance(items, list)  # max_batch_size=1: one request, no batch()
        items = [items] if single else items
        run, collate = self.service.run, self.service.spec.collate
        outputs = run(*collate([inputs for inputs, _ in items]))
        answers = [
            (tuple(out[i] for out in outputs), context, len(items))
            for i, (_, context) in enumerate(items)
        ]
        return answers[0] if single else answers

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        outputs, context, size = output
        return {**self.service.model.answer(outputs, context), "batch_size": size}


def main() -> None:
    words = [w for w in sys.argv[1:] if not w.startswith(("port=", "host="))]
    settings = dict(w.split("=", 1) for w in sys.argv[1:])
    max_batch = int(settings.get("max_batch", 1))
    wait = float(settings.get("max_wait_ms", 2.0)) / 1000
    api = ProjectAPI(words, max_batch_size=max_batch, batch_timeout=wait if max_batch > 1 else 0.0)
    server = ls.LitServer(api, accelerator="cpu", api_path="/predict")
    server.run(
        port=int(settings.get("port", 8000)), log_level="warning", generate_client_file=False
    )


if __name__ == "__main__":  # LitServe's worker re-imports this module
    main()
