"""Node and graph classification: the shared classifier, on graph batches.

- `NodeClassifier`: one graph, full batch (`data.loader=full`): every step runs the net over all
  nodes and scores only the split's nodes. Pictures: the last hidden layer of every node in 2-D
  (PCA), coloured by class, and for a GAT the attention of a few nodes over their neighbours.
- `GraphClassifier`: mini-batches of small graphs, one label per graph (GIN).
"""

import torch
from matplotlib.figure import Figure

from common.classifier import Classifier
from common.figures import log_figure_file, scatter_figure


class NodeClassifier(Classifier):
    """Cross-entropy and accuracy over the nodes of a split, for a net mapping (node features
    (N, F), edges (2, E)) to logits (N, num_classes).

    `decay="first"`: the optimizer's weight decay applies to the first layer only, as in the GCN
    paper (dropout regularizes the rest); `"all"`: to every parameter (GAT). Every
    `picture_every_n_epochs` epochs (0: never) the node embeddings are drawn (and GAT attention).
    """

    def __init__(
        self,
        net,
        num_classes: int,
        optimizer,
        scheduler=None,
        decay: str = "all",
        picture_every_n_epochs: int = 20,
        picture_nodes: int = 1000,
    ):
        super().__init__(net, num_classes, optimizer, scheduler)
        if decay not in ("first", "all"):
            raise ValueError(f"decay must be 'first' or 'all', got {decay!r}")
        self.decay = decay
        self.picture_every_n_epochs = picture_every_n_epochs
        self.picture_nodes = picture_nodes
        self.graph = None  # the graph of the last validation batch, for pictures

    def unpack(self, batch):
        graph, nodes = batch  # a torch-geometric Data, int64 (n,): the split's nodes
        return (graph.x, graph.edge_index, nodes), graph.y[nodes]

    def forward(self, x, edge_index, nodes=None) -> torch.Tensor:
        logits = self.net(x, edge_index)  # (N, num_classes): message passing needs every node
        return logits if nodes is None else logits[nodes]

    def optimizer_params(self):
        if self.decay == "all":
            return super().optimizer_params()
        first = list(self.net.layers[0].parameters())
        rest = [p for p in self.parameters() if all(p is not q for q in first)]
        return [{"params": first}, {"params": rest, "weight_decay": 0.0}]

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.graph = batch[0]

    def on_validation_epoch_end(self) -> None:
        every = self.picture_every_n_epochs
        last = self.current_epoch == self.trainer.max_epochs - 1
        due = every and (self.current_epoch % every == 0 or last)
        if self.graph is None or not due or self.trainer.sanity_checking:
            return
        x, edge_index, y = self.graph.x, self.graph.edge_index, self.graph.y
        shown = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        shown = shown[: self.picture_nodes].to(y.device)  # the same nodes every epoch
        hidden = self.net.embed(x, edge_index)[shown].float()  # (n, hidden)
        hidden = hidden - hidden.mean(dim=0)
        _, _, axes = torch.linalg.svd(hidden, full_matrices=False)  # PCA: principal axes
        points = hidden @ axes[:2].t()  # (n, 2)
        title = f"last hidden layer, PCA, epoch {self.current_epoch}"
        log_figure_file(self, "val/embedding", scatter_figure(points, y[shown], self.names, title))
        if hasattr(self.net, "attention"):
            edges, weights = self.net.attention(x, edge_index)
            figure = attention_figure(edges, weights, y, self.names)
            log_figure_file(self, "val/attention", figure)

    @property
    def names(self) -> list[str] | None:
        return self.data_spec.class_names


class GraphClassifier(Classifier):
    """Cross-entropy and accuracy per graph, for a net mapping (node features (N, F), edges
    (2, E), batch (N,): each node's graph) to logits (G, num_classes)."""

    def unpack(self, batch):
        return (batch.x, batch.edge_index, batch.batch), batch.y  # a torch-geometric Batch

    def forward(self, x, edge_index, batch) -> torch.Tensor:
        return self.net(x, edge_index, batch)


def attention_figure(
    edges: torch.Tensor, weights: torch.Tensor, y: torch.Tensor, names=None, nodes: int = 4
) -> Figure:
    """Bars: how `nodes` nodes (of 4 to 12 neighbours) weight each neighbour and themselves,
    averaged over heads; green for a neighbour of the node's own class, red for another."""
    source, target = edges.cpu()
    weights, y = weights.detach().float().mean(dim=1).cpu(), y.cpu()  # (E,): one per edge
    degree = torch.bincount(target, minlength=len(y))
    picked = ((degree >= 5) & (degree <= 13)).nonzero().flatten()[:nodes].tolist()  # self incl.
    fig = Figure(figsize=(3.0 * max(len(picked), 1), 2.8), dpi=100)
    for i, node in enumerate(picked):
        ax = fig.add_subplot(1, len(picked), i + 1)
        at = (target == node).nonzero().flatten()
        same = y[source[at]] == y[node]
        colors = ["tab:green" if s else "tab:red" for s in same]
        ax.bar(range(len(at)), weights[at].tolist(), color=colors)
        labels = ["self" if int(j) == node else str(int(j)) for j in source[at]]
        ax.set_xticks(range(len(at)), labels, rotation=90, fontsize=6)
        cls = names[int(y[node])] if names else int(y[node])
        ax.set(title=f"node {node} ({cls})", ylim=(0, 1.15 * float(weights[at].max())))
        ax.title.set_fontsize(8)
    fig.suptitle("attention over neighbours (green: same class)", fontsize=9)
    fig.tight_layout()
    return fig
