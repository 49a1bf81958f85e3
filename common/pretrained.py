"""torchvision's pretrained weights, with a download failure explained in one message."""

from collections.abc import Callable

import torch
from torch import nn


def build_pretrained(build: Callable[..., nn.Module], weights, name: str) -> nn.Module:
    """`build(weights=weights)`; when the download fails (no network, a proxy, a bad hash), a
    RuntimeError that says where torch caches the file and how to train without it."""
    try:
        return build(weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash, RuntimeError
        file = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not download the pretrained {name} weights from {weights.url} ({err}). "
            f"torch caches them in {torch.hub.get_dir()}/checkpoints: copy {file} there from a "
            "machine with network access, or train from scratch with pretrained=False"
        ) from err
