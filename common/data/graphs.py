"""Graphs in the shared data layer: node splits of one graph, served whole, and graph batches.

Node classification trains on one graph: its splits are sets of nodes (`Nodes`), and a batch is
the whole graph plus the nodes whose labels count (the `full` loader kind: one batch per epoch).
There is nothing to shard over processes, so `full` refuses DDP with one message. Graph
classification batches many small graphs into one disconnected graph (`collate_graphs`), with
the usual DataLoader and samplers, DDP included.

Graphs are torch-geometric `Data` objects: `x` (N, F) node features, `edge_index` (2, E) int64
source and target nodes (both directions for undirected graphs), `y` labels.
"""

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data


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
