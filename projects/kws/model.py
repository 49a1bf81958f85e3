"""Keyword spotting: the shared classifier on batches of waveforms, with what a learner wants to
see and hear, and `make predict input=clip.wav`.

Every `picture_every_n_epochs` epochs (and after the first): the validation confusion matrix,
log-mel spectrograms of a few validation clips per class, for a net with a `LogMel` front end
the same training clips before and after SpecAugment, and a few validation clips as audio in
TensorBoard (with what the model heard, as text). Each picture is also a PNG in the run's
images/ folder.
"""

from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from common.classifier import FileClassifier
from common.errors import UserError
from common.figures import confusion_matrix_figure, log_figure_file
from projects.kws.audio import INT16_SCALE, fit_length, read_audio
from projects.kws.nets import LogMel, MelDB


def spectrogram_figure(rows: list[list[torch.Tensor]], titles: list[list[str]]) -> Figure:
    """Spectrograms (n_mels, frames), one list per row (rows may differ in length), low
    frequencies at the bottom."""
    cols = max(len(row) for row in rows)
    fig = Figure(figsize=(1.9 * cols + 0.4, 1.25 * len(rows) + 0.4), dpi=100)
    for r, (row, row_titles) in enumerate(zip(rows, titles, strict=True)):
        for c, (spec, title) in enumerate(zip(row, row_titles, strict=True)):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(spec.cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(title, fontsize=7)
            ax.set(xticks=[], yticks=[])
    fig.tight_layout(pad=0.3)
    return fig


class KeywordSpotter(FileClassifier):
    """Cross-entropy and accuracy (from `Classifier`) for a net mapping waveforms (B, T) to
    logits (B, num_classes); pictures and audio every `picture_every_n_epochs` epochs (0:
    never) of up to `picture_classes` classes, `clips_per_class` clips each, and
    `audio_clips` clips to listen to."""

    def __init__(
        self,
        net,
        num_classes: int,
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.0,
        picture_every_n_epochs: int = 5,
        picture_classes: int = 12,
        clips_per_class: int = 3,
        audio_clips: int = 4,
    ):
        super().__init__(net, num_classes, optimizer, scheduler, label_smoothing)
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.picture_every_n_epochs = picture_every_n_epochs
        self.picture_classes = min(picture_classes, num_classes)
        self.clips_per_class = clips_per_class
        self.audio_clips = audio_clips
        self.examples: dict[int, list[torch.Tensor]] = {}  # class -> validation clips (T,)
        self.heard: list[tuple[torch.Tensor, int, int]] = []  # (clip (T,), true, predicted)
        self.augmented: torch.Tensor | None = None  # training clips (n, T) as the net got them

    def use_data(self, spec) -> None:
        super().use_data(spec)
        if spec.num_samples is None:
            return
        was_training = self.net.training
        try:  # two silent clips through the net, in eval mode: no statistics move
            with torch.no_grad():
                self.net.eval()(torch.zeros(2, spec.num_samples, device=self.device))
        except RuntimeError as err:
            seconds = spec.num_samples / spec.sample_rate
            raise UserError(
                f"clips of {spec.num_samples} samples ({seconds:g} s at {spec.sample_rate} Hz) "
                f"are too short for {type(self.net).__name__}, whose pooling needs more "
                f"({err}); raise data.clip_seconds"
            ) from None
        finally:
            self.net.train(was_training)

    def picture_due(self) -> bool:
        every, epoch = self.picture_every_n_epochs, self.current_epoch
        return every > 0 and (epoch == 0 or (epoch + 1) % every == 0)

    def training_step(self, batch, batch_idx):
        if batch_idx == 0 and self.picture_due():  # time-shifted and noisy already, on the device
            self.augmented = batch[0][:4].detach()
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        preds = self.evaluate(batch, "val")
        waves, labels = batch
        self.val_confusion.update(preds, labels)
        if not self.picture_due() or self.trainer.sanity_checking:
            return
        heard = {label for _, label, _ in self.heard}
        for wave, label, pred in zip(waves, labels.tolist(), preds.tolist(), strict=True):
            if label < self.picture_classes and self.clips_per_class > 0:
                clips = self.examples.setdefault(label, [])
                if len(clips) < self.clips_per_class:
                    clips.append(wave.cpu())
            # One clip of each class until there are `audio_clips` (validation sets are
            # often sorted by class: the first few clips would all be one word).
            if len(self.heard) < self.audio_clips and label not in heard:
                self.heard.append((wave.cpu(), label, pred))
                heard.add(label)

    def on_validation_epoch_end(self):
        matrix = self.val_confusion.compute()  # (K, K), summed over processes
        self.val_confusion.reset()
        if not self.trainer.sanity_checking and self.picture_due():
            names = self.data_spec.class_names or [str(k) for k in range(len(matrix))]
            log_figure_file(self, "val/confusion_matrix", confusion_matrix_figure(matrix, names))
            self.log_examples(names)
        self.examples, self.heard, self.augmented = {}, [], None

    @torch.no_grad()
    def log_examples(self, names: list[str]) -> None:
        if self.trainer.global_rank != 0:
            return
        frontend = getattr(self.net, "frontend", None)
        if isinstance(frontend, LogMel):
            to_mel = frontend.spectrogram  # the net's own features, before normalization
        else:  # a raw-waveform net: the log-mel spectrogram a spectrogram net would see
            to_mel = MelDB(self.data_spec.sample_rate).to(self.device)
        classes = sorted(self.examples)
        if classes:
            rows = [to_mel(torch.stack(self.examples[k]).to(self.device))[:, 0] for k in classes]
            titles = [[names[k]] * len(self.examples[k]) for k in classes]
            log_figure_file(self, "val/log_mel_by_class", spectrogram_figure(rows, titles))
        if isinstance(frontend, LogMel) and self.augmented is not None:
            # As the net sees them: normalized (running statistics, untouched), then masked.
            was_training = frontend.training
            frontend.eval()
            clean = frontend(self.augmented)[:, 0]  # (n, n_mels, frames)
            frontend.augment.train()
            masked = frontend.augment(clean[:, None])[:, 0]
            frontend.train(was_training)
            n = len(clean)
            rows, titles = (
                [list(clean), list(masked)],
                [["time shift + noise"] * n, ["+ SpecAugment"] * n],
            )
            log_figure_file(self, "train/spec_augment", spectrogram_figure(rows, titles))
        self.log_audio(names)

    def log_audio(self, names: list[str]) -> None:
        """The `heard` clips to listen to, and a table of what the model made of them."""
        rate = self.data_spec.sample_rate
        rows = ["| clip | said | heard |", "| --- | --- | --- |"]
        rows += [f"| {i} | {names[t]} | {names[p]} |" for i, (_, t, p) in enumerate(self.heard)]
        for logger in self.loggers:
            for i, (wave, true, pred) in enumerate(self.heard):
                tag = f"val/audio/{i}_{names[true]}"  # the same clip every epoch: a stable tag
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_audio(tag, wave[None], self.global_step, rate)
                elif isinstance(logger, WandbLogger):
                    import wandb

                    caption = f"said {names[true]}, heard {names[pred]}"
                    audio = wandb.Audio(wave.numpy(), sample_rate=rate, caption=caption)
                    logger.experiment.log({tag: audio}, step=self.global_step)
            if isinstance(logger, TensorBoardLogger) and self.heard:
                logger.experiment.add_text("val/audio_heard_as", "\n".join(rows), self.global_step)

    def read_input(self, path: Path) -> torch.Tensor:
        """Any audio file, mixed to mono, resampled and fitted to the training clips' length, as
        the training clips were: (1, T)."""
        spec = self.data_spec
        if spec.sample_rate is None:
            raise UserError("this checkpoint holds no data description: train it with this repo")
        wave = fit_length(read_audio(path, spec.sample_rate), spec.num_samples)
        return wave[None].to(self.device)

    def export_spec(self):
        """The net, front end included: waveforms (B, T) -> logits (B, K)."""
        from common.export import ExportSpec, Tensor

        spec = self.data_spec
        if spec.sample_rate is None:
            raise UserError("this checkpoint holds no data description: train it with this repo")
        rate, t = spec.sample_rate, spec.num_samples
        waves = 0.1 * torch.randn(2, t, generator=torch.Generator().manual_seed(0))
        k = len(spec.class_names) if spec.class_names else None
        return ExportSpec(
            module=self.net,
            examples=(waves,),
            inputs=[Tensor("waves", "float32", ["batch", t], f"mono, {rate} Hz, in [-1, 1]")],
            outputs=[Tensor("logits", "float32", ["batch", k], "softmax gives probabilities")],
            preprocessing=(
                f"decode the audio, mix it to mono, resample it to {rate} Hz and fit it to {t} "
                "samples (shorter: padded with silence on both sides; longer: its loudest "
                f"window of {t}), as `make predict` does; the graph computes the features "
                "(log-mel spectrogram, or none for a raw-waveform net) itself"
            ),
            class_names=spec.class_names,
            request="audio",
        )

    def export_inputs(self, batch) -> tuple[torch.Tensor]:
        return (batch[0].float() / INT16_SCALE,)  # int16 (B, T) -> [-1, 1)

    def read_request(self, path: Path) -> tuple[tuple[torch.Tensor], None]:
        """One uploaded clip -> the graph's input for it, (T,)."""
        spec = self.data_spec
        return (fit_length(read_audio(path, spec.sample_rate), spec.num_samples),), None
