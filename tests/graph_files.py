"""Small stand-ins for the real graph datasets' raw files, in their exact formats, so the real
readers (torch-geometric's Planetoid and TUDataset) run with no download."""

import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch


def write_fake_planetoid(
    root: Path, name: str, num_features: int, num_classes: int, labelled: int = 700, test: int = 200
) -> Path:
    """root/<name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}: `labelled` nodes (the
    first 20 per class of them the training set, as the public split's `y` rows), then `test`
    test nodes, whose rows in tx/ty follow test.index's (shuffled) order, as in the real files.
    Features are binary words, 60% from the node's class's own words; 80% of edges stay within
    a class: both learnable."""
    gen = np.random.default_rng(0)
    n = labelled + test
    y = np.arange(n) % num_classes
    words = np.zeros((n, num_features), dtype=np.float32)
    own = num_features // num_classes
    for i in range(n):
        picks = [
            y[i] * own + gen.integers(own) if gen.random() < 0.6 else gen.integers(num_features)
            for _ in range(12)
        ]
        words[i, picks] = 1
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    graph = {i: [] for i in range(n)}
    for i in range(n):
        for _ in range(2):
            same = gen.random() < 0.8
            pool = np.flatnonzero((y == y[i]) == same)
            j = int(gen.choice(pool))
            if j != i:
                graph[i].append(j)
                graph[j].append(i)
    order = labelled + gen.permutation(test)  # test.index: the test nodes, shuffled
    train = 20 * num_classes
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True)
    parts = {
        "x": sp.csr_matrix(words[:train]),
        "allx": sp.csr_matrix(words[:labelled]),
        "tx": sp.csr_matrix(words[order]),
        "y": onehot[:train],
        "ally": onehot[:labelled],
        "ty": onehot[order],
        "graph": graph,
    }
    for part, value in parts.items():
        with open(raw / f"ind.{name.lower()}.{part}", "wb") as f:
            pickle.dump(value, f)
    (raw / f"ind.{name.lower()}.test.index").write_text("".join(f"{i}\n" for i in order))
    return raw


def write_fake_tu(root: Path, name: str, num_features: int, graphs: int = 60) -> Path:
    """root/<name>/raw/<name>_{A,graph_indicator,graph_labels,node_labels}.txt: `graphs` small
    graphs, label 1 for those with a cycle, 0 for trees (1-based node ids, labels -1/1 as in
    MUTAG), node labels 0..num_features-1."""
    from projects.graph.data import trees_and_cycles

    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True)
    edges, indicator, labels, node_labels, offset = [], [], [], [], 0
    for g, graph in enumerate(trees_and_cycles(graphs, num_features, seed=1), start=1):
        n = graph.num_nodes
        for a, b in graph.edge_index.t().tolist():
            edges.append(f"{a + offset + 1}, {b + offset + 1}")
        indicator += [str(g)] * n
        labels.append("1" if int(graph.y) else "-1")
        node_labels += [str(int(t)) for t in graph.x.argmax(dim=1)]
        offset += n
    for part, lines in {
        "A": edges,
        "graph_indicator": indicator,
        "graph_labels": labels,
        "node_labels": node_labels,
    }.items():
        (raw / f"{name}_{part}.txt").write_text("\n".join(lines) + "\n")
    return raw


def random_graph(n: int = 12, edges: int = 20, features: int = 5, seed: int = 0):
    """(x (n, F), edge_index (2, 2 * edges) undirected, no self-loops)."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, n, (2, edges), generator=gen)
    pairs = pairs[:, pairs[0] != pairs[1]]
    return torch.randn(n, features, generator=gen), torch.cat([pairs, pairs.flip(0)], dim=1)
