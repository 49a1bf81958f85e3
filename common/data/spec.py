"""What a model may know about its data, handed over in one place."""

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch


@dataclass
class DataSpec:
    """The facts a model needs from its data, and nothing else.

    `DataModule.spec()` makes one after `setup`; `TemplateModule.setup` hands it to the model's
    `use_data` before fitting or testing, and the model keeps it in its checkpoints (plain lists,
    numbers and strings: `weights_only` loading works), so `make predict` needs no data folder.
    A model never reads datamodule attributes: swap the data, and it still gets these.
    """

    class_names: list[str] | None = None  # what labels 0..K-1 stand for
    # Images: inputs are (pixels / 255 - mean) / std per channel, of in_chans x size x size.
    image_size: int | None = None
    in_chans: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    # Text: a trained HF `tokenizers` tokenizer (its JSON) and the longest sequence, in tokens.
    tokenizer: str | None = None
    max_length: int | None = None
    # Audio: mono clips of num_samples samples at sample_rate Hz, floats in [-1, 1].
    sample_rate: int | None = None
    num_samples: int | None = None
    # Not saved: the first n training inputs (n, ...) as the model sees them in evaluation
    # (normalized, not augmented): for statistics a net is initialized from.
    train_inputs: Callable[[int], torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The saved part: plain values, for a checkpoint."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "train_inputs"}

    @classmethod
    def from_dict(cls, values: dict) -> "DataSpec":
        known = {f.name for f in fields(cls)} - {"train_inputs"}
        return cls(**{k: v for k, v in values.items() if k in known})
