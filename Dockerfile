# `make serve` in a container, on the CPU.
#
#   make train PROJECT=mnist data.synthetic=true trainer.max_epochs=1
#   make export PROJECT=mnist ckpt_path=last format=onnx
#   docker build -t templates-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/logs:/app/logs:ro" -e PROJECT=mnist templates-serve
#   curl -F file=@digit.png http://127.0.0.1:8000/predict
#
# The image holds the code, not a model: the run folders come in read-only from the host (or
# COPY one in a derived image); CKPT picks the checkpoint (default: the project's newest
# last.ckpt), BACKEND the backend (onnx needs `make export` first, torch does not).
FROM python:3.11-slim

# libsndfile: the audio projects read uploads with soundfile.
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# The CPU builds of torch (~200 MB instead of the ~6 GB CUDA ones PyPI serves), the versions
# pyproject.toml pins; its `torch==2.14.1` is then satisfied by `2.14.1+cpu`.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
    torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0

COPY pyproject.toml README.md ./
COPY common common
COPY projects projects
COPY configs configs
RUN pip install --no-cache-dir -e .  # editable: the code runs from /app, where configs/ is

ENV PROJECT=mnist CKPT=last BACKEND=onnx
EXPOSE 8000
# The server stops gracefully on SIGTERM (`docker stop`): no new connections, the requests in
# flight answered, then exit.
STOPSIGNAL SIGTERM
USER nobody
CMD ["sh", "-c", "exec python -m common.serve project=$PROJECT ckpt_path=$CKPT backend=$BACKEND host=0.0.0.0 port=8000"]
