"""Fréchet Inception Distance for any model that samples images."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from common.capabilities import SamplesImages
from common.errors import UserError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID network


def build_fid(weights: str | None):
    """torchmetrics' FrechetInceptionDistance (2048 InceptionV3 pool features, uint8 images).

    Its weights come from torch-fidelity's GitHub release into torch's hub cache, or from the
    file `weights`; a machine with no network and no copy gets one readable error.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        if weights is not None:
            # torch-fidelity loads the file with weights_only=False: check first that it is
            # nothing but tensors.
            torch.load(weights, map_location="cpu", weights_only=True)
        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights)
    except Exception as err:  # URLError, OSError, UnpicklingError, RuntimeError...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        where = weights or f"the download to {cache / INCEPTION_FILE}"
        raise UserError(
            f"FID needs torch-fidelity's InceptionV3 weights, and {where} failed: {reason}. "
            f"Offline, copy {INCEPTION_FILE} (from github.com/toshas/torch-fidelity releases, "
            f"v0.2.0) into {cache}, or set callbacks.fid.weights=<file>; or train without FID "
            "(callbacks.fid=null)"
        ) from err


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], (B, C, H, W), -> uint8 (B, 3, H, W), as the Inception network wants."""
    images = (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FID(Callback):
    """Logs `val/fid` and `test/fid`: the Fréchet Inception Distance between the held-out images
    and as many of the model's samples (`SamplesImages`), over InceptionV3 pool features
    (torchmetrics, torch-fidelity's weights). Lower is better; 0 means the two feature
    distributions have the same mean and covariance.

    Real images have their normalization undone with the model's data spec. Samples are seeded
    per batch and process, so every evaluation draws the same noise. The Inception network lives
    here, not in the model: its 24M weights stay out of checkpoints. `weights`: a local copy of
    them, for machines without network.
    """

    def __init__(self, weights: str | None = None):
        self.weights = weights
        self.metric = None
        self._unnormalize = None  # (std, mean), each (1, C, 1, 1) on the device

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not isinstance(pl_module, SamplesImages):
            raise UserError(
                f"FID compares a model's samples with data: {type(pl_module).__name__}"
                " draws no samples (it has no sample_images)"
            )
        if self.metric is None:
            self.metric = build_fid(self.weights)

    def _update(self, trainer, pl_module, batch, batch_idx: int) -> None:
        real = batch[0]  # (B, C, H, W), normalized as the data spec says
        if self._unnormalize is None:  # once: the constants, and the metric on the device
            spec = pl_module.data_spec
            if spec.mean is None:
                raise UserError(
                    "FID needs the data's normalization: train with an image datamodule"
                )
            mean, std = (
                torch.tensor(v, device=real.device).view(1, -1, 1, 1) for v in (spec.mean, spec.std)
            )
            self._unnormalize = (std, mean)
            self.metric.to(real.device)
        fake = pl_module.sample_images(
            len(real), seed=batch_idx * trainer.world_size + trainer.global_rank
        )
        self.metric.update(
            to_uint8_rgb(torch.addcmul(self._unnormalize[1], real, self._unnormalize[0])), real=True
        )
        self.metric.update(to_uint8_rgb(fake), real=False)

    def _log(self, pl_module, stage: str) -> None:
        pl_module.log(f"{stage}/fid", self.metric.compute())  # synced over processes
        self.metric.reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._update(trainer, pl_module, batch, batch_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._log(pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update(trainer, pl_module, batch, batch_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._log(pl_module, "test")
