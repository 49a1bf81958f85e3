"""The newproject project's data: a learnable synthetic source to start from.

Replace `read` with your dataset reader (and name its files in `expected`, its download in
`fetch`): the shared `DataModule` (common/data/base.py) does the splits, loaders and DDP shards.
"""

import torch
from torch.utils.data import TensorDataset

from common.data import DataModule, Splits
from common.errors import UserError


class NewProjectData(DataModule):
    """Points in `num_features` dimensions from `num_classes` classes, seeded.

    Each class is two Gaussian blobs (standard deviation `noise`) around random centres, so a
    class is no single cloud; a small MLP learns it within a few hundred steps. Batches:
    (float32 features (B, num_features), int64 labels (B,)); `synthetic_size` = (train pool,
    test). `synthetic=True` generates them; set it to false once `read` reads your data.
    """

    name = "newproject"

    def __init__(
        self,
        data_dir: str | None = None,
        num_classes: int = 4,
        num_features: int = 16,
        noise: float = 1.0,
        synthetic_size: tuple[int, int] = (6000, 1000),
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        self.num_classes, self.num_features, self.noise = num_classes, num_features, noise
        self.synthetic_size = tuple(synthetic_size)
        self.class_names = [f"class_{i}" for i in range(num_classes)]

    def generate(self) -> Splits:
        # (K, 2, F): two blob centres per class, the same for every split of one seed.
        centres = torch.randn(
            self.num_classes,
            2,
            self.num_features,
            generator=torch.Generator().manual_seed(self.seed),
        )

        def draw(n: int, split_seed: int) -> TensorDataset:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + split_seed + 1)
            labels = torch.randint(self.num_classes, (n,), generator=gen)
            blobs = torch.randint(2, (n,), generator=gen)
            noise = self.noise * torch.randn(n, self.num_features, generator=gen)
            return TensorDataset(centres[labels, blobs] + noise, labels)  # (n, F), (n,)

        n_train, n_test = self.synthetic_size
        return Splits(draw(n_train, split_seed=0), None, draw(n_test, split_seed=1))

    def read(self) -> Splits:
        raise UserError(
            "projects/newproject/data.py reads no real data yet: write NewProjectData.read(), "
            "or keep data.synthetic=true"
        )
