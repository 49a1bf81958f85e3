"""The graph project's data: one citation graph whose nodes are classified (Planetoid: Cora,
CiteSeer, PubMed), sets of small graphs that are classified whole (TUDataset: MUTAG, PROTEINS),
and a learnable synthetic stand-in for each.

    make train PROJECT=graph data.synthetic=true        # a planted-partition graph, offline
    make train PROJECT=graph data=citeseer              # downloads the Planetoid files
    make train PROJECT=graph experiment=graph_gin       # GIN on MUTAG, one of 10 folds

Node classification trains on one graph: its splits are sets of nodes (`Nodes`), and a batch is
the whole graph plus the nodes whose labels count, served by the shared layer's `full` loader
kind (one batch per epoch, nothing to shard over processes). Graph classification batches many
small graphs into one disconnected graph (`collate_graphs`), with the usual DataLoader and
samplers, DDP included. Graphs are torch-geometric `Data`: `x` (N, F) node features,
`edge_index` (2, E) int64 source and target nodes (both directions for undirected graphs), `y`.
"""

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from common.data.base import DataModule, Splits, subset
from common.errors import UserError


class Nodes(Dataset):
    """The nodes `index` (int64, (n,)) of `graph`: one split of a node-classification graph.

    It splits like any dataset (`subset`: the same graph, fewer nodes) and moves to a device as a
    whole (`to`), so a seeded `val_size` split and `loader=full` work with no graph-specific code.
    """

    def __init__(self, graph: Data, index: torch.Tensor):
        self.graph, self.index = graph, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> int:
        return int(self.index[i])

    def subset(self, indices: torch.Tensor) -> "Nodes":
        return Nodes(self.graph, self.index[indices.to(self.index.device)])

    def to(self, device: torch.device) -> "Nodes":
        """These nodes on `device`. torch-geometric moves a graph in place (`Data.to` returns
        the same object), so the splits that share it share one copy on the device."""
        return Nodes(self.graph.to(device), self.index.to(device))

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What the split holds in memory (the graph's tensors and the node index)."""
        return (*(v for v in self.graph.to_dict().values() if torch.is_tensor(v)), self.index)

    def whole(self) -> tuple[Data, torch.Tensor]:
        """The one batch of a full-batch epoch: (graph, the split's node indices (n,))."""
        return self.graph, self.index


def collate_graphs(graphs: list[Data]) -> Batch:
    """Graphs -> one `Batch`: the graphs side by side as one disconnected graph, with `batch`
    (N_total,) saying which graph each node belongs to (what pooling sums over)."""
    return Batch.from_data_list(graphs)


def csbm(
    num_nodes: int,
    num_classes: int,
    num_features: int,
    degree: float,
    homophily: float,
    noise: float,
    seed: int,
) -> Data:
    """A contextual stochastic block model: a graph whose edges and features both hint at the
    class, neither enough alone.

    Classes are balanced and shuffled. Each node has about `degree` neighbours on average, a
    fraction `homophily` of them of its own class (a stochastic block model). Features are the
    class mean (a random unit vector) plus Gaussian noise of std `noise` per dimension: the
    noise makes a classifier of the features alone confuse classes often, and averaging over
    same-class neighbours cancels part of it.
    """
    if not 0 <= homophily <= 1:
        raise UserError(f"data.synthetic_graph.homophily={homophily} must be in [0, 1]")
    if not 0 < degree < num_nodes:
        raise UserError(f"data.synthetic_graph.degree={degree} must be in (0, {num_nodes})")
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(num_nodes) % num_classes)[torch.randperm(num_nodes, generator=gen)]
    means = torch.randn(num_classes, num_features, generator=gen)
    means = means / means.norm(dim=1, keepdim=True)  # (K, F), unit length
    x = means[y] + noise * torch.randn(num_nodes, num_features, generator=gen)  # (N, F)
    # Edges drawn as pairs, O(E) rather than a coin per pair of nodes: degree * N / 2 pairs in
    # all (Poisson), a fraction `homophily` joining a node to a random member of its own class,
    # the rest to a random member of another class; repeats and self-loops are dropped.
    members = torch.argsort(y)  # nodes grouped by class: class k at [start[k], start[k+1])
    sizes = torch.bincount(y, minlength=num_classes)
    start = torch.cumsum(sizes, 0) - sizes
    count = int(torch.poisson(torch.tensor(degree * num_nodes / 2.0), generator=gen))
    source = torch.randint(0, num_nodes, (count,), generator=gen)
    same = torch.rand(count, generator=gen) < homophily
    shift = torch.randint(1, max(num_classes, 2), (count,), generator=gen)  # another class
    cls = torch.where(same, y[source], (y[source] + shift) % num_classes)
    offset = (torch.rand(count, generator=gen) * sizes[cls]).long()
    target = members[start[cls] + offset]
    pairs = torch.stack([source, target])[:, source != target]  # (2, ~E/2)
    pairs = torch.unique(torch.stack([pairs.min(0).values, pairs.max(0).values]), dim=1)
    edge_index = torch.cat([pairs, pairs.flip(0)], dim=1)  # undirected: both directions
    return Data(x=x, edge_index=edge_index, y=y)


def edge_homophily(edge_index: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of edges joining two nodes of the same class (1: every neighbour agrees)."""
    return (y[edge_index[0]] == y[edge_index[1]]).float().mean().item()


def per_class_split(
    y: torch.Tensor, per_class: int, val_size: int, test_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Planetoid's semi-supervised split: `per_class` labelled training nodes of each class,
    then `val_size` and `test_size` other nodes, all seeded. Returns three int64 index tensors."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    classes = int(y.max()) + 1
    train = torch.cat([order[y[order] == k][:per_class] for k in range(classes)])
    rest = order[~torch.isin(order, train)]
    if val_size + test_size > len(rest):
        raise UserError(
            f"data.val_size={val_size} + data.test_size={test_size} nodes exceed the "
            f"{len(rest)} nodes left after {per_class} training nodes per class"
        )
    return train, rest[:val_size], rest[val_size : val_size + test_size]


class PlanetoidData(DataModule):
    """Cora, CiteSeer or PubMed: one citation graph (papers, citations, bag-of-words features,
    topics), with the public split of the GCN paper: 20 labelled papers per class, 500
    validation and 1,000 test papers. Features are row-normalized (they sum to 1).

    `synthetic=True`: a `csbm` graph with the dataset's node, feature and class counts and a
    split of the same sizes. Batches are (graph, node indices (n,)): see `Nodes`.
    """

    loaders = ("full",)

    def __init__(
        self,
        name: str,
        num_features: int,
        num_classes: int,
        num_nodes: int,
        data_dir: str | None = None,
        class_names: list[str] | None = None,
        train_per_class: int = 20,
        val_size: int = 500,
        test_size: int = 1000,
        synthetic_graph: dict | None = None,
        **kwargs,
    ):
        super().__init__(data_dir, val_size=val_size, test_size=test_size, **kwargs)
        self.name = name
        self.num_features, self.num_classes, self.num_nodes = num_features, num_classes, num_nodes
        self.class_names = list(class_names) if class_names else None
        self.train_per_class = train_per_class
        self.synthetic_graph = dict(synthetic_graph or {})

    @property
    def location(self) -> Path:
        return Path(self.data_dir) / self.name / "raw"

    @property
    def expected(self) -> tuple[str, ...]:
        parts = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
        return tuple(f"ind.{self.name.lower()}.{part}" for part in parts)

    def fetch(self) -> None:
        from torch_geometric.datasets import Planetoid

        Planetoid(self.data_dir, self.name)

    def read(self) -> Splits:
        from torch_geometric.datasets import Planetoid
        from torch_geometric.transforms import NormalizeFeatures

        graph = Planetoid(self.data_dir, self.name, transform=NormalizeFeatures())[0]
        masks = (graph.train_mask, graph.val_mask, graph.test_mask)
        graph = Data(x=graph.x, edge_index=graph.edge_index, y=graph.y)
        return self._splits(graph, *(mask.nonzero().flatten() for mask in masks))

    def generate(self) -> Splits:
        knobs = {"degree": 4.0, "homophily": 0.7, "noise": 0.3, **self.synthetic_graph}
        graph = csbm(self.num_nodes, self.num_classes, self.num_features, **knobs, seed=self.seed)
        split = per_class_split(
            graph.y, self.train_per_class, self.val_size, self.test_size, self.seed + 1
        )
        return self._splits(graph, *split)

    def _splits(self, graph: Data, *index: torch.Tensor) -> Splits:
        features, classes = graph.x.shape[1], int(graph.y.max()) + 1
        if (features, classes) != (self.num_features, self.num_classes):
            raise UserError(
                f"{self.name} has {features} features and {classes} classes, the config says "
                f"data.num_features={self.num_features}, data.num_classes={self.num_classes}"
            )
        return Splits(*(Nodes(graph, i) for i in index))


# --- graph classification -----------------------------------------------------------------------


def trees_and_cycles(count: int, num_features: int, seed: int) -> list[Data]:
    """Small graphs to classify by shape: trees (label 0) or trees with 1-3 extra edges, which
    close cycles (label 1). Node features are random one-hot "atom types" that carry no label
    information: only the structure does (a tree has exactly nodes - 1 edges), which a GIN's
    sum pooling can count and an average of the node features alone cannot see."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(count):
        n = int(torch.randint(8, 25, (1,), generator=gen))
        parents = [int(torch.randint(0, v, (1,), generator=gen)) for v in range(1, n)]
        pairs = {(p, v) for v, p in enumerate(parents, start=1)}  # a random tree
        label = i % 2
        edges = n - 1 + label * int(torch.randint(1, 4, (1,), generator=gen))
        while len(pairs) < edges:
            a, b = sorted(torch.randint(0, n, (2,), generator=gen).tolist())
            if a != b:
                pairs.add((a, b))
        pairs = torch.tensor(sorted(pairs)).t()  # (2, E/2)
        types = torch.randint(0, num_features, (n,), generator=gen)
        graphs.append(
            Data(
                x=torch.nn.functional.one_hot(types, num_features).float(),  # (n, F)
                edge_index=torch.cat([pairs, pairs.flip(0)], dim=1),
                y=torch.tensor([label]),
            )
        )
    return graphs


class TUData(DataModule):
    """A TUDataset of small labelled graphs (MUTAG: 188 molecules, mutagenic or not; PROTEINS:
    1,113 proteins, enzyme or not), classified whole.

    Evaluated as the GIN paper does, by 10-fold cross-validation: `fold` k (0..folds-1) of a
    seeded stratified partition is the test set, and `val_size` of the rest is held out for
    checkpointing. A sweep over `data.fold` gives the ten test accuracies. Batches are
    torch-geometric `Batch`es: many graphs as one disconnected graph.

    `synthetic=True`: `trees_and_cycles`, with the dataset's feature count.
    """

    loaders = ("dataloader",)
    collate_fn = staticmethod(collate_graphs)

    def __init__(
        self,
        name: str,
        num_features: int,
        num_classes: int,
        data_dir: str | None = None,
        class_names: list[str] | None = None,
        folds: int = 10,
        fold: int = 0,
        synthetic_size: int = 600,
        **kwargs,
    ):
        super().__init__(data_dir, **kwargs)
        if not 0 <= fold < folds:
            raise UserError(f"data.fold={fold} is not one of 0..{folds - 1} (data.folds={folds})")
        self.name = name
        self.num_features, self.num_classes = num_features, num_classes
        self.class_names = list(class_names) if class_names else None
        self.folds, self.fold = folds, fold
        self.synthetic_size = synthetic_size

    @property
    def location(self) -> Path:
        return Path(self.data_dir) / self.name / "raw"

    @property
    def expected(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{part}.txt" for part in ("A", "graph_indicator", "graph_labels"))

    def fetch(self) -> None:
        from torch_geometric.datasets import TUDataset

        TUDataset(self.data_dir, self.name)

    def read(self) -> Splits:
        from torch_geometric.datasets import TUDataset

        dataset = TUDataset(self.data_dir, self.name)
        graphs = [Data(x=g.x, edge_index=g.edge_index, y=g.y) for g in dataset]
        return self._folded(graphs)

    def generate(self) -> Splits:
        return self._folded(trees_and_cycles(self.synthetic_size, self.num_features, self.seed))

    def _folded(self, graphs: list[Data]) -> Splits:
        from sklearn.model_selection import StratifiedKFold

        features = graphs[0].x.shape[1] if graphs[0].x is not None else 0
        labels = torch.cat([g.y for g in graphs])
        classes = int(labels.max()) + 1
        if (features, classes) != (self.num_features, self.num_classes):
            raise UserError(
                f"{self.name} has {features} node features and {classes} classes, the config "
                f"says data.num_features={self.num_features}, data.num_classes={self.num_classes}"
            )
        folds = StratifiedKFold(self.folds, shuffle=True, random_state=self.seed)
        rest, test = list(folds.split(torch.zeros(len(labels)), labels.numpy()))[self.fold]
        return Splits(
            subset(graphs, torch.as_tensor(rest)), None, subset(graphs, torch.as_tensor(test))
        )
