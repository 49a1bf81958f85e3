"""What a model can do beyond training: one small Protocol per capability.

An entry point (`make predict`, `make sample`, ...) checks its capability with `require`, which
names the projects that have it when the model does not. A project gains a capability by
defining its methods on its LightningModule: nothing is registered anywhere else. A model learns
what it needs of its data (class names, normalization, tokenizer) from its `data_spec`, which
its checkpoint carries, so none of these needs the data.
"""

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from omegaconf import OmegaConf

from common.errors import UserError
from common.resolvers import REPO_ROOT


@runtime_checkable
class PredictsFile(Protocol):
    """`make predict input=<file>`: run on one file (an image, say), prepared as in training."""

    def output_path(self, path: Path, output: Path | None) -> Path | None:
        """The file `predict_file(path, output)` writes: `output`, or the project's own name
        beside `path` when None; None when it writes none. A UserError for an `output` it
        cannot write (another extension, say). `make predict` asks before `predict_file`, to
        check that the file is safe to write (`common.predict.check_output`)."""
        ...

    def predict_file(self, path: Path, output: Path | None) -> str:
        """The text to print; a result file (an annotated image) goes to
        `output_path(path, output)`. Unreadable input is a UserError."""
        ...


@runtime_checkable
class PredictsText(Protocol):
    """`make predict text="..."`: run on one text."""

    def predict_text(self, text: str) -> str:
        """The text to print (a label and its probability, say)."""
        ...


@runtime_checkable
class SamplesImages(Protocol):
    """`make sample`: draw new images from a generative model."""

    def sample_images(self, n: int, seed: int) -> torch.Tensor:
        """n images (n, C, H, W) with values in [0, 1]; the same seed draws the same images."""
        ...


def model_class(project: str) -> type | None:
    """The LightningModule class a project trains: configs/project/<project>.yaml picks
    `/model: <m>`, whose configs/model/<m>.yaml names the class in `_target_`; None when that
    cannot be read off the files."""
    from hydra.utils import get_class

    configs = REPO_ROOT / "configs"
    try:
        project_cfg = OmegaConf.load(configs / "project" / f"{project}.yaml")
        defaults = OmegaConf.to_container(project_cfg).get("defaults", [])
        (model,) = (d["/model"] for d in defaults if isinstance(d, dict) and "/model" in d)
        return get_class(OmegaConf.load(configs / "model" / f"{model}.yaml")._target_)
    except Exception:  # another layout, a broken file: leave the project out of the list
        return None


def projects_with(capability: type) -> list[str]:
    """The projects whose model has `capability`, sorted."""
    names = sorted(p.stem for p in (REPO_ROOT / "configs" / "project").glob("*.yaml"))
    classes = {name: model_class(name) for name in names}
    return [name for name, cls in classes.items() if cls and issubclass(cls, capability)]


def require_project(project: str, capability: type, doing: str) -> None:
    """`require`, before any model is built: a UserError when the class a project's config
    names lacks `capability` (nothing when the class cannot be read off the files)."""
    cls = model_class(project)
    if cls is not None and not issubclass(cls, capability):
        able = ", ".join(projects_with(capability)) or "none yet"
        raise UserError(f"project '{project}' cannot {doing}; the projects that can: {able}")


def require(model, capability: type, project: str, doing: str) -> None:
    """A UserError unless `model` has `capability`; `doing` says what was asked ("sample
    images"), and the message names the projects that can."""
    if not isinstance(model, capability):
        methods = [n for n, f in vars(capability).items() if callable(f) and not n.startswith("_")]
        missing = [n for n in methods if not callable(getattr(model, n, None))]
        if len(missing) < len(methods):  # half a capability: a project being written
            raise UserError(
                f"project '{project}' cannot {doing}: its model lacks "
                f"{', '.join(missing)} ({capability.__name__} in common/capabilities.py)"
            )
        able = ", ".join(projects_with(capability)) or "none yet"
        raise UserError(f"project '{project}' cannot {doing}; the projects that can: {able}")


@runtime_checkable
class PlaysEpisodes(Protocol):
    """`make play`: run a trained agent for one episode of its environment and film it."""

    def play_episode(self, seed: int) -> tuple[list, float, float]:
        """(frames, return, fps): the episode's frames (H, W, 3) uint8, the sum of its rewards,
        and the frame rate that shows it in real time; the same seed plays the same episode."""
        ...


@runtime_checkable
class Exports(Protocol):
    """`make export`: the model as a graph another runtime can run (ONNX, torch.export)."""

    def export_spec(self):
        """A `common.export.ExportSpec`: the module to trace (eval mode, preprocessing that
        belongs to the model inside it), example inputs, which dimensions vary, and what the
        inputs and outputs mean."""
        ...


@runtime_checkable
class Serves(Protocol):
    """`make serve`: answer POST /predict requests with the exported graph (or the model), in
    batches. The graph is the `Exports` one; these two methods are what surrounds it."""

    def export_spec(self):
        """As `Exports`; its `request` says what a request holds: "image", "audio", "text"."""
        ...

    def read_request(self, request) -> tuple[tuple, object]:
        """One request (the path of an uploaded file, or a text) -> (the graph's inputs for it,
        without the batch dimension; a context `answer` needs, e.g. the image's own size).
        Input it cannot use is a UserError, which the server answers with a 4xx."""
        ...

    def answer(self, outputs: tuple, context) -> dict:
        """One request's graph outputs (without the batch dimension) -> its JSON answer."""
        ...


@runtime_checkable
class Compresses(Protocol):
    """`make compress`: a classifier (`common.classifier.Classifier`) of batched inputs whose
    `net` may be quantized, pruned or distilled, judged by its test accuracy; `export_spec`
    (as `Exports`) for onnxruntime's int8."""

    def export_spec(self):
        """As `Exports`."""
        ...

    def export_inputs(self, batch) -> tuple:
        """A raw batch (before any batch transform) -> the exported graph's inputs."""
        ...

    def unpack(self, batch) -> tuple[tuple, torch.Tensor]:
        """(inputs to forward, labels) of a batch."""
        ...

    def eval_logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for testing."""
        ...
