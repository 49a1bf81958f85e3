"""The graph project's parts: message-passing layers, the full-batch loader kind, the synthetic
graphs, the Planetoid and TU readers on generated raw files, and the sweep summary."""

import json
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from common.checks import check_config
from common.data.loaders import FullBatchLoader
from common.errors import UserError
from common.sweeps import SweepSummary, summarize, summary_figure, varying_number
from projects.graph.data import (
    Nodes,
    PlanetoidData,
    TUData,
    csbm,
    edge_homophily,
    trees_and_cycles,
)
from projects.graph.model import attention_figure
from projects.graph.nets import GAT, GCN, GIN, MLP, GraphSAGE
from tests.conftest import make_config, options, train_once
from tests.graph_files import random_graph, write_fake_planetoid, write_fake_tu

NODE_NETS = [GCN, GAT, GraphSAGE]


def relabel(x, edge_index, perm):
    """The same graph with node i renamed to position inv[i]: new node k is old node perm[k]."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return x[perm], inv[edge_index]


@pytest.mark.parametrize("net_class", NODE_NETS, ids=lambda c: c.__name__)
def test_node_outputs_permute_with_the_nodes(net_class):
    torch.manual_seed(0)
    net = net_class(5, 3, num_layers=2).eval()
    x, edge_index = random_graph()
    perm = torch.randperm(len(x))
    out = net(x, edge_index)  # (N, 3)
    assert torch.allclose(net(*relabel(x, edge_index, perm)), out[perm], atol=1e-5)
    # ... and the edges matter: dropping half of them changes some outputs.
    assert not torch.allclose(net(x, edge_index[:, ::2]), out, atol=1e-3)


def test_graph_output_ignores_node_order():
    torch.manual_seed(0)
    net = GIN(5, 2, hidden=8, num_layers=3).eval()
    x, edge_index = random_graph()
    batch = torch.zeros(len(x), dtype=torch.long)
    perm = torch.randperm(len(x))
    out = net(x, edge_index, batch)  # (1, 2)
    assert torch.allclose(net(*relabel(x, edge_index, perm), batch), out, atol=1e-5)


@pytest.mark.parametrize("net_class", [*NODE_NETS, MLP], ids=lambda c: c.__name__)
def test_messages_travel_only_along_edges(net_class):
    """Node 0 has no edges: its output depends on its own features alone, whatever the others'
    features, and equals that of a one-node graph."""
    torch.manual_seed(0)
    net = net_class(5, 3, num_layers=3).eval()
    x, edge_index = random_graph(seed=1)
    edge_index = edge_index[:, (edge_index != 0).all(dim=0)]  # isolate node 0
    others_changed = x.clone()
    others_changed[1:] = torch.randn_like(x[1:])
    alone = net(x[:1], torch.empty(2, 0, dtype=torch.long))  # (1, 3)
    assert torch.allclose(net(x, edge_index)[0], alone[0], atol=1e-5)
    assert torch.allclose(net(others_changed, edge_index)[0], alone[0], atol=1e-5)
    # Change one node's features: its neighbour's output changes, unless the net ignores edges.
    i, j = edge_index[:, 0].tolist()
    one_changed = x.clone()
    one_changed[j] += 1.0
    reached = not torch.allclose(net(one_changed, edge_index)[i], net(x, edge_index)[i])
    assert reached == (net_class is not MLP)


def test_gat_attention_sums_to_one_per_node_and_head():
    net = GAT(5, 3, heads=4).eval()
    x, edge_index = random_graph()
    edges, weights = net.attention(x, edge_index)  # self-loops added: every node attends
    assert weights.shape == (edges.shape[1], 4)
    totals = torch.zeros(len(x), 4).index_add_(0, edges[1], weights)
    assert torch.allclose(totals, torch.ones(len(x), 4), atol=1e-5)


def test_full_batch_loader_gives_the_whole_split_once_per_epoch():
    graph = csbm(100, 4, 8, degree=4, homophily=0.7, noise=0.5, seed=0)
    nodes = Nodes(graph, torch.arange(10, 30))
    loader = FullBatchLoader(nodes)
    assert len(loader) == 1
    for _ in range(2):  # every epoch the same single batch
        batches = list(loader)
        assert len(batches) == 1
        whole, index = batches[0]
        assert whole is graph and torch.equal(index, torch.arange(10, 30))
    # A split of the split keeps the graph and takes fewer nodes.
    part = nodes.subset(torch.tensor([0, 2]))
    assert part.graph is graph and part.index.tolist() == [10, 12]


def test_a_full_batch_epoch_is_one_optimizer_step(tmp_path):
    overrides = [
        "project=graph",
        "data.synthetic=true",
        "data.num_nodes=300",
        "data.num_features=16",
        "data.num_classes=3",
        "data.val_size=60",
        "data.test_size=100",
        "trainer.max_epochs=4",
        "model.picture_every_n_epochs=2",
        "logger=csv",
    ]
    last, metrics = train_once(tmp_path, overrides)
    assert torch.load(last, weights_only=True)["global_step"] == 4  # 4 epochs, 4 steps
    assert 0 <= metrics["test/acc"] <= 1
    images = sorted(p.name for p in (tmp_path / "logs").rglob("images/*.png"))
    assert images == [f"val_embedding_epoch00{e}.png" for e in (0, 2, 3)]  # every 2nd, the last


@pytest.mark.parametrize("devices", ["2", "[0,1]"])
def test_full_batch_with_more_processes_is_refused_before_they_start(tmp_path, devices):
    cfg = make_config(tmp_path, ["project=graph", f"trainer.devices={devices}"])
    with pytest.raises(UserError, match="nothing to split over 2 processes"):
        check_config(cfg)
    check_config(
        make_config(
            tmp_path,
            [
                "project=graph",
                "experiment=graph_gin",
                f"trainer.devices={devices}",
                "trainer.accelerator=cpu",
            ],
        )
    )


def test_full_batch_refuses_ddp():
    data = PlanetoidData("Cora", 16, 3, 300, synthetic=True, loader="full")
    data.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(UserError, match="nothing to split over 2 processes: use trainer.devices=1"):
        data.setup("fit")


def test_csbm_has_the_asked_degree_homophily_and_seed():
    graph = csbm(2000, 5, 20, degree=6, homophily=0.7, noise=0.5, seed=3)
    assert graph.x.shape == (2000, 20) and graph.y.bincount().tolist() == [400] * 5
    assert graph.edge_index.shape[1] / 2000 == pytest.approx(6, rel=0.1)  # mean degree
    assert edge_homophily(graph.edge_index, graph.y) == pytest.approx(0.7, abs=0.03)
    pairs = set(map(tuple, graph.edge_index.t().tolist()))
    assert all((b, a) in pairs for a, b in pairs)  # undirected
    assert all(a != b for a, b in pairs)  # no self-loops
    again = csbm(2000, 5, 20, degree=6, homophily=0.7, noise=0.5, seed=3)
    assert torch.equal(again.edge_index, graph.edge_index) and torch.equal(again.x, graph.x)


def test_synthetic_graph_sets_label_cycles():
    for graph in trees_and_cycles(40, 7, seed=0):
        undirected = graph.edge_index.shape[1] // 2
        assert graph.x.shape == (graph.num_nodes, 7)
        assert (undirected > graph.num_nodes - 1) == bool(graph.y)  # a tree has n - 1 edges


def test_planetoid_reads_the_raw_files_with_the_public_split(tmp_path):
    write_fake_planetoid(tmp_path, "Cora", num_features=70, num_classes=7)
    data = PlanetoidData("Cora", 70, 7, 2708, data_dir=str(tmp_path), download=False)
    data.prepare_data()  # nothing missing: no download
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (140, 500, 200)
    graph = data.train_set.graph
    assert graph.num_nodes == 900 and graph.x.shape == (900, 70)
    assert torch.allclose(graph.x.sum(dim=1), torch.ones(900))  # features row-normalized
    assert data.train_set.index.tolist() == list(range(140))
    assert sorted(data.test_set.index.tolist()) == list(range(700, 900))


def test_planetoid_missing_files_say_what_and_where(tmp_path):
    data = PlanetoidData("Cora", 1433, 7, 2708, data_dir=str(tmp_path), download=False)
    with pytest.raises(UserError) as err:
        data.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "Cora" / "raw") in message and "ind.cora.graph" in message
    assert "data.synthetic=true" in message


def test_planetoid_refuses_files_unlike_the_config(tmp_path):
    write_fake_planetoid(tmp_path, "Cora", num_features=70, num_classes=7)
    data = PlanetoidData("Cora", 1433, 7, 2708, data_dir=str(tmp_path), download=False)
    with pytest.raises(UserError, match="70 features and 7 classes, the config says"):
        data.setup("fit")


def test_tu_folds_cover_every_graph_once(tmp_path):
    write_fake_tu(tmp_path, "MUTAG", num_features=7, graphs=50)

    def identity(graph):  # exact: the node features (one-hot types) and the edges
        return (tuple(graph.x.argmax(dim=1).tolist()), tuple(graph.edge_index.flatten().tolist()))

    tested = []
    for fold in range(5):
        data = TUData("MUTAG", 7, 2, data_dir=str(tmp_path), folds=5, fold=fold, download=False)
        data.setup("fit")
        held = {identity(g) for g in data.test_set}
        assert not held & {identity(g) for g in (*data.train_set, *data.val_set)}
        assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 50
        tested += [identity(g) for g in data.test_set]
    everything = {identity(g) for g in (*data.train_set, *data.val_set, *data.test_set)}
    assert len(everything) == 50 and sorted(tested) == sorted(everything)  # each once
    batch = next(iter(data.train_dataloader()))  # the last fold's
    assert batch.num_graphs == min(data.batch_size, len(data.train_set))
    assert batch.x.shape[1] == 7 and batch.batch.max() == batch.num_graphs - 1


def test_tu_fold_out_of_range_is_one_error():
    with pytest.raises(UserError, match=r"data.fold=10 is not one of 0..9"):
        TUData("MUTAG", 7, 2, synthetic=True, fold=10)


@pytest.mark.parametrize("option", options("model/gnn"))
def test_gnn_option_builds_and_classifies(tmp_path, option):
    cfg = make_config(tmp_path, ["project=graph", f"model/gnn={option}"])
    net = instantiate(cfg.model.net)
    x = torch.rand(50, cfg.data.num_features)
    _, edge_index = random_graph(50, 100)
    assert net(x, edge_index).shape == (50, cfg.data.num_classes)


def test_gcn_decays_its_first_layer_only(tmp_path):
    cfg = make_config(tmp_path, ["project=graph", "model/gnn=gcn"])
    model = instantiate(cfg.model)
    first, rest = model.configure_optimizers().param_groups
    assert first["weight_decay"] == 5e-4 and rest["weight_decay"] == 0
    assert {id(p) for p in first["params"]} == {id(p) for p in model.net.layers[0].parameters()}
    assert len(first["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_sweep_summary_averages_over_seeds(tmp_path):
    results = {("gcn", 0): 0.8, ("gcn", 1): 0.9, ("mlp", 0): 0.5, ("mlp", 1): 0.6}
    summary = SweepSummary()
    summary.on_multirun_start(OmegaConf.create({}))
    for i, ((net, seed), acc) in enumerate(results.items()):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- model/gnn={net}\n- seed={seed}\n")
        (run / "metrics.json").write_text(json.dumps({"test/acc": acc, "train/loss": 1.0}))
        job = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run)}}})
        summary.on_job_end(job, job_return=None)
    summary.on_multirun_end(OmegaConf.create({}))
    text = (tmp_path / "summary.md").read_text()
    assert "| model/gnn=gcn | 2 | 0.8500 ± 0.0707 |" in text
    assert "| model/gnn=mlp | 2 | 0.5500 ± 0.0707 |" in text
    assert not (tmp_path / "summary.png").exists()  # the varying key is not a number


def test_sweep_summary_draws_one_numeric_key(tmp_path):
    runs = [
        ([f"model.net.num_layers={k}", f"seed={s}"], {"test/acc": 1 / k})
        for k in (1, 2, 4, 8)
        for s in (0, 1)
    ]
    rows = summarize(runs)
    assert [r["runs"] for r in rows] == [2, 2, 2, 2]
    assert varying_number(rows) == ("model.net.num_layers", [1.0, 2.0, 4.0, 8.0])
    figure = summary_figure(rows, *varying_number(rows), "test/acc")
    assert figure.axes[0].get_xscale() == "log"  # doublings spaced evenly
    (x, mean, _), *_ = [line.get_data() + (None,) for line in figure.axes[0].lines]
    assert list(x) == [1, 2, 4, 8] and list(mean) == pytest.approx([1, 0.5, 0.25, 0.125])
    steps = [([f"h={h}"], {"test/acc": h}) for h in (0.1, 0.3, 0.5)]
    rows = summarize(steps)
    assert summary_figure(rows, *varying_number(rows), "test/acc").axes[0].get_xscale() == "linear"


def test_attention_figure_shows_each_picked_nodes_neighbours_and_itself():
    x, edge_index = random_graph(n=12, edges=40)
    net = GAT(5, 3, heads=2).eval()
    edges, weights = net.attention(x, edge_index)
    y = torch.arange(12) % 3
    figure = attention_figure(edges, weights, y, ["a", "b", "c"], nodes=3)
    degree = torch.bincount(edges[1], minlength=12)  # neighbours + self
    picked = [n for n in range(12) if 5 <= degree[n] <= 13][:3]
    assert len(figure.axes) == len(picked) > 0
    for ax, node in zip(figure.axes, picked, strict=True):
        bars = ax.patches
        assert len(bars) == degree[node]  # one bar per neighbour, and one for itself
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels.count("self") == 1
        assert sum(b.get_height() for b in bars) == pytest.approx(1, abs=1e-5)  # a softmax
