"""Tabular regression: synthetic data with known weights, and scikit-learn's bundled diabetes data."""

import torch
from torch.utils.data import TensorDataset

from common.data.base import DataModule
from common.errors import UserError

SOURCES = ("synthetic", "diabetes")


class RegressionDataModule(DataModule):
    """Batches of (float32 features (B, F), float32 targets (B,)).

    `source="synthetic"`: y = X @ true_weight + true_bias + noise, X ~ N(0, 1), with the true
    parameters kept on the module so a test can check that a model recovers them.
    `synthetic=True` means synthetic data whatever the source (with `num_features` features).
    `source="diabetes"`: 442 patients, 10 features, disease progression after one year; real and
    offline (it ships with scikit-learn). `standardize` z-scores features and target with
    training-pool statistics (R^2 does not change; gradient descent converges far faster).
    """

    def __init__(
        self,
        data_dir: str,
        source: str = "synthetic",
        num_features: int = 8,
        num_samples: int = 4000,
        noise: float = 0.1,
        test_size: float = 0.1,
        standardize: bool = False,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if source not in SOURCES:
            raise UserError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
        if source == "diabetes" and num_features != 10 and not self.synthetic:
            raise UserError("the diabetes data has 10 features: set data.num_features=10")
        self.source = source
        self.num_features = num_features
        self.num_samples = num_samples
        self.noise = noise
        self.test_size = test_size
        self.standardize = standardize
        gen = torch.Generator().manual_seed(self.seed)
        self.true_weight = torch.randn(num_features, generator=gen)  # (F,)
        self.true_bias = float(torch.randn(1, generator=gen))

    @property
    def known_weights(self) -> tuple[torch.Tensor, float] | None:
        """(weight (F,), bias) that generated the data, when synthetic and not rescaled."""
        if (self.source == "synthetic" or self.synthetic) and not self.standardize:
            return self.true_weight, self.true_bias
        return None

    def _features_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source == "diabetes" and not self.synthetic:
            from sklearn.datasets import load_diabetes

            x, y = load_diabetes(return_X_y=True)
            return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        gen = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(self.num_samples, self.num_features, generator=gen)
        y = x @ self.true_weight + self.true_bias
        y = y + self.noise * torch.randn(self.num_samples, generator=gen)
        return x, y

    def load(self) -> tuple[TensorDataset, TensorDataset]:
        x, y = self._features_targets()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + 2))
        n_test = int(round(self.test_size * len(x)))
        test_idx, pool_idx = order[:n_test], order[n_test:]
        if self.standardize:
            x_mean, x_std = x[pool_idx].mean(0), x[pool_idx].std(0)
            y_mean, y_std = y[pool_idx].mean(), y[pool_idx].std()
            x, y = (x - x_mean) / x_std, (y - y_mean) / y_std
        return TensorDataset(x[pool_idx], y[pool_idx]), TensorDataset(x[test_idx], y[test_idx])
