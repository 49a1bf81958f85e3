"""Graph neural networks on torch-geometric layers: plain nn.Modules, no Lightning, no config.

Message passing: a layer updates every node from its own features and an aggregate (a sum,
mean, or attention-weighted sum) of its neighbours' features, along `edge_index` (2, E): row 0
the source nodes, row 1 the targets. k layers reach k hops. Nodes are an unordered set: permute
them (and relabel the edges), and the outputs permute the same way.

- `GCN` (Kipf & Welling 2017): mean over neighbours and self, each weighted 1/sqrt(d_i d_j).
- `GAT` (Velickovic et al. 2018): attention weights over neighbours, several heads.
- `GraphSAGE` (Hamilton et al. 2017): own features and the neighbours' mean, kept apart.
- `GIN` (Xu et al. 2019): sums, as injective as a 1-WL test, pooled per graph.
- `MLP`: no message passing at all, the features-only baseline.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, global_add_pool


class NodeNet(nn.Module):
    """`num_layers` message-passing layers, (N, in_channels) node features and (2, E) edges ->
    (N, num_classes) logits: in -> hidden -> ... -> classes. Dropout before every layer,
    an activation after every layer but the last. Subclasses choose the layer."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 16,
        num_layers: int = 2,
        drop_rate: float = 0.5,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.drop_rate = drop_rate
        self.layers = nn.ModuleList()
        width = in_channels
        for i in range(num_layers):
            last = i == num_layers - 1
            self.layers.append(self.layer(width, num_classes if last else hidden, last))
            width = hidden * self.concat_heads

    concat_heads = 1  # a hidden layer outputs hidden * concat_heads features

    def layer(self, in_channels: int, out_channels: int, last: bool) -> nn.Module:
        raise NotImplementedError

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (N, hidden * concat_heads), what the output layer classifies
        (the input features themselves for a one-layer net)."""
        for layer in self.layers[:-1]:
            x = F.dropout(x, self.drop_rate, self.training)
            x = self.activation(layer(x, edge_index))
        return x

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.embed(x, edge_index), self.drop_rate, self.training)
        return self.layers[-1](x, edge_index)  # (N, num_classes)


class FeaturesOnly(nn.Linear):
    """A linear layer that takes the edges and ignores them."""

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class MLP(NodeNet):
    """The baseline without the graph: each node classified from its own features alone. What a
    GNN scores above it is what the edges taught."""

    def layer(self, in_channels, out_channels, last):
        return FeaturesOnly(in_channels, out_channels)


class GCN(NodeNet):
    """Graph convolution: x_i' = W sum_{j in N(i) + i} x_j / sqrt(d_i d_j), degrees d counting
    the self-loop. The normalization keeps a hub's sum from growing with its degree."""

    def layer(self, in_channels, out_channels, last):
        return GCNConv(in_channels, out_channels)


class GraphSAGE(NodeNet):
    """x_i' = W1 x_i + W2 mean_{j in N(i)} x_j: a node's own features keep their own weights."""

    def layer(self, in_channels, out_channels, last):
        return SAGEConv(in_channels, out_channels, aggr="mean")


class GAT(NodeNet):
    """Graph attention: each of `heads` heads weights neighbour j of node i by
    softmax_j(LeakyReLU(a . [W x_i || W x_j])), self included; hidden layers concatenate the
    heads (hidden * heads features), the output layer averages `out_heads` of them. Attention
    weights are dropped with `attn_drop_rate` while training (the paper's 0.6 on Cora)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 8,
        num_layers: int = 2,
        drop_rate: float = 0.6,
        heads: int = 8,
        out_heads: int = 1,
        attn_drop_rate: float = 0.6,
    ):
        # Read by `layer`, which NodeNet's __init__ calls: set first (plain values, no modules).
        self.concat_heads, self.out_heads, self.attn_drop_rate = heads, out_heads, attn_drop_rate
        super().__init__(in_channels, num_classes, hidden, num_layers, drop_rate)

    def layer(self, in_channels, out_channels, last):
        heads = self.out_heads if last else self.concat_heads
        return GATConv(
            in_channels, out_channels, heads=heads, concat=not last, dropout=self.attn_drop_rate
        )

    def activation(self, x):
        return F.elu(x)

    def attention(self, x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first layer's attention: (edges (2, E'), weights (E', heads)), self-loops added,
        each target node's weights summing to 1 per head."""
        _, (edges, weights) = self.layers[0](x, edge_index, return_attention_weights=True)
        return edges, weights


class GIN(nn.Module):
    """Graph isomorphism network for whole graphs: (N, in_channels) features, (2, E) edges and
    `batch` (N,) (which graph each node is in) -> (G, num_classes) logits.

    Each layer: h_i' = MLP((1 + eps) h_i + sum_{j in N(i)} h_j), with eps = 0 (GIN-0). Every
    layer's node states, the input included, are summed per graph (sum pooling counts, where a
    mean or max would lose how many), and each sum is classified by its own linear head; the
    heads' logits add up, as in the paper.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 32,
        num_layers: int = 5,
        drop_rate: float = 0.5,
        train_eps: bool = False,
    ):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers counts the input: at least 2, got {num_layers}")
        self.drop_rate = drop_rate
        widths = [in_channels] + [hidden] * (num_layers - 1)
        self.convs = nn.ModuleList(
            GINConv(
                nn.Sequential(
                    nn.Linear(w, hidden),
                    nn.BatchNorm1d(hidden),
                    nn.ReLU(),
                    nn.Linear(hidden, hidden),
                ),
                train_eps=train_eps,
            )
            for w in widths[:-1]
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in widths[:-1])
        self.heads = nn.ModuleList(nn.Linear(w, num_classes) for w in widths)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor:
        states = [x]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x, edge_index)))  # (N, hidden)
            states.append(x)
        logits = 0
        for h, head in zip(states, self.heads, strict=True):
            pooled = global_add_pool(h, batch)  # (G, width)
            logits = logits + F.dropout(head(pooled), self.drop_rate, self.training)
        return logits  # (G, num_classes)
