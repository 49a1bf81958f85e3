"""The newproject LightningModule: the shared classifier, ready to grow."""

from common.classifier import Classifier


class NewProjectModel(Classifier):
    """Cross-entropy training, `val/acc` and `test/acc` that stay exact under DDP, optimizer and
    schedule from the config: all from `Classifier` (common/classifier.py).

    Where to grow it: `unpack` for batches of another shape, `evaluate` for more metrics,
    `use_data` for what the model needs from its data (`self.data_spec`), and a capability of
    common/capabilities.py (`output_path` with `predict_file`, `predict_text`, `sample_images`)
    for a new verb.
    """
