"""The linreg project's data: synthetic features with known weights, and scikit-learn's bundled
diabetes data."""

import torch
from torch.utils.data import TensorDataset

from common.data.base import DataModule, Splits
from common.errors import UserError

SOURCES = ("synthetic", "diabetes")


class RegressionDataModule(DataModule):
    """Batches of (float32 features (B, F), float32 targets (B,)).

    `source="synthetic"`: y = X @ true_weight + true_bias + noise, X ~ N(0, 1), with the true
    parameters kept on the module so a test can check that a model recovers them.
    `synthetic=True` means synthetic data whatever the source (with `num_features` features).
    `source="diabetes"`: 442 patients, 10 features, disease progression after one year; real and
    offline (it ships with scikit-learn). `standardize` z-scores features and target with the
    training pool's statistics (R^2 does not change; gradient descent converges far faster).
    A seeded `test_size` of the samples is the test set.
    """

    name = "regression"

    def __init__(
        self,
        data_dir: str | None = None,
        source: str = "synthetic",
        num_features: int = 8,
        num_samples: int = 4000,
        noise: float = 0.1,
        standardize: bool = False,
        test_size: float | int = 0.1,
        **kwargs,
    ):
        super().__init__(data_dir, test_size=test_size, **kwargs)
        if source not in SOURCES:
            raise UserError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
        if source == "diabetes" and num_features != 10 and not self.synthetic:
            raise UserError("the diabetes data has 10 features: set data.num_features=10")
        self.source = source
        self.num_features = num_features
        self.num_samples = num_samples
        self.noise = noise
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

    def generate(self) -> Splits:
        gen = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(self.num_samples, self.num_features, generator=gen)
        y = x @ self.true_weight + self.true_bias
        y = y + self.noise * torch.randn(self.num_samples, generator=gen)
        return Splits(TensorDataset(x, y))

    def read(self) -> Splits:
        if self.source == "synthetic":
            return self.generate()
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        return Splits(TensorDataset(x, y))

    def prepare_splits(self, train, val, test):
        if not self.standardize:
            return train, val, test
        x = torch.cat([train.tensors[0], val.tensors[0]])  # the training pool
        y = torch.cat([train.tensors[1], val.tensors[1]])
        (x_mean, x_std), (y_mean, y_std) = (x.mean(0), x.std(0)), (y.mean(), y.std())

        def scaled(d: TensorDataset) -> TensorDataset:
            return TensorDataset((d.tensors[0] - x_mean) / x_std, (d.tensors[1] - y_mean) / y_std)

        train, val = scaled(train), scaled(val)
        return train, val, val if test is None else scaled(test)
