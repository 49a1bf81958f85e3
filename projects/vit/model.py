"""Vision Transformer classifier: the shared image classifier with AdamW-style parameter groups."""

from common.classifier import ImageClassifier

# Parameters that carry no weight decay: biases and LayerNorm scales (ndim < 2) and the learned
# embeddings (ours and torchvision's names). Decaying them pulls positions and the class token
# toward zero for no gain in generalization.
NO_DECAY = ("pos_embed", "cls_token", "class_token")


class ViTClassifier(ImageClassifier):
    """Label-smoothed cross-entropy, exact metrics and `make predict` (from `ImageClassifier`),
    and the optimizer's weight decay applied to weight matrices only.

    An optimizer that routes parameters by name (Muon, `model/optimizer=muon`) gets the named
    parameters instead and makes its own groups.
    """

    def optimizer_params(self):
        params = super().optimizer_params()
        if isinstance(params, list):  # named parameters for a routing optimizer
            return params
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim < 2 or any(key in name for key in NO_DECAY)
            (no_decay if skip else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
