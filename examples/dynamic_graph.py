"""Dynamic computation graphs: a recursive net whose autograd graph has the shape of its input.

PyTorch is define-by-run: autograd records the graph while the Python code runs, so a model can
recurse, loop or branch on its data with ordinary Python, and every input gets a graph of its
own. Here an input is an arithmetic expression such as `((3 - 7) * 4)` and its label is the
value mod 10 (`-16 % 10 = 4`). The net is a TreeRNN (Socher et al., 2011): an embedding per
digit and one small MLP per operator that merges two children into one vector, applied bottom
up by a recursive Python function; a linear head reads the value off any node's vector.

What the graph holds: a `grad_fn` node per differentiable op (`loss.grad_fn`, then its
`next_functions`), each with the tensors its backward needs saved on it (`_saved_*`: tanh keeps
its output, a matmul its inputs), and an `AccumulateGrad` node per parameter at the ends.
`backward()` walks it once, adds the gradients into each `.grad`, and frees it, saved tensors
included: the next forward records a new graph, here of another shape.

The cost is Python: a tree node is a few tiny ops, each dispatched from Python and recorded one
by one, so a step takes milliseconds where the same FLOPs batched would take microseconds. The
fix is batching the nodes of equal depth across the trees of a batch, one op per level
(TorchFold, DyNet's autobatching). `torch.compile` and `torch.export` want the opposite, a fixed
structure: they trace one path through the Python and guard on it, so `torch.compile` would
recompile for each new tree shape (and fall back to eager past its recompile limit), and
`torch.export` would capture the graph of one tree only.

Run: `python -m examples.dynamic_graph [--steps 500] [--depth 4] [--seed 0] [--threads 1]`.
"""

import argparse
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# An expression tree is a digit (int) or a tuple (op, left, right).
OPS = {"+": "add", "-": "sub", "*": "mul"}  # symbol -> module name (a clearer state_dict key)
LEAF_PROB = 0.3  # below the root, a subtree stops early at a digit with this probability
NUM_CLASSES = 10  # the label is the value mod 10


def random_tree(rng: random.Random, depth: int, root: bool = True):
    """An expression with at most `depth` levels of operators; the root is always an operator."""
    if depth == 0 or (not root and rng.random() < LEAF_PROB):
        return rng.randrange(10)
    op = rng.choice(list(OPS))
    return (op, random_tree(rng, depth - 1, False), random_tree(rng, depth - 1, False))


def make_data(rng: random.Random, n: int, depth: int, min_depth: int = 1) -> list:
    return [random_tree(rng, rng.randint(min_depth, depth)) for _ in range(n)]


def height(tree) -> int:
    """Levels of operators: 0 for a digit."""
    return 0 if isinstance(tree, int) else 1 + max(height(tree[1]), height(tree[2]))


def deep_trees(rng: random.Random, n: int, depth: int) -> list:
    """n random trees of exactly `depth` levels (a draw that stopped early is drawn again)."""
    trees = []
    while len(trees) < n:
        tree = random_tree(rng, depth)
        if height(tree) == depth:
            trees.append(tree)
    return trees


def evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = evaluate(left), evaluate(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def label(tree) -> int:
    return evaluate(tree) % NUM_CLASSES  # Python's % is never negative: -16 % 10 == 4


def subtrees(tree) -> list:
    """Every subtree, children before parents (the order `TreeNet.encode` visits them)."""
    if isinstance(tree, int):
        return [tree]
    return subtrees(tree[1]) + subtrees(tree[2]) + [tree]


def count_ops(tree) -> int:
    return sum(not isinstance(t, int) for t in subtrees(tree))


def to_text(tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    return f"({to_text(left)} {op} {to_text(right)})"


class TreeNet(nn.Module):
    """Digit embeddings, one MLP per operator applied bottom up, a linear head on node vectors."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.digit = nn.Embedding(10, dim)
        # Two layers: with one tanh layer (the 2011 TreeRNN), 300 steps on depth-2 trees reach
        # ~0.35 held-out accuracy, with two ~0.93. A 10 x 10 table mod 10 is far from linear.
        self.compose = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.Tanh()
                )
                for name in OPS.values()
            }
        )
        self.head = nn.Linear(dim, NUM_CLASSES)

    def encode(self, tree, nodes: list | None = None) -> torch.Tensor:
        """The vector (1, dim) of `tree`; appends each subtree's vector to `nodes` if given.

        Rows stay 2-D so that each Linear is one addmm (a 1-D input adds view nodes).
        """
        if isinstance(tree, int):
            vec = self.digit.weight[tree : tree + 1]  # (1, dim): one SliceBackward0 node
        else:
            op, left, right = tree
            # Plain recursion: autograd records whatever ops this call happens to run.
            children = torch.cat([self.encode(left, nodes), self.encode(right, nodes)], dim=1)
            vec = self.compose[OPS[op]](children)  # (1, 2 * dim) -> (1, dim)
        if nodes is not None:
            nodes.append(vec)
        return vec

    def forward(self, trees: list) -> torch.Tensor:
        roots = torch.cat([self.encode(t) for t in trees])  # (B, dim)
        return self.head(roots)  # (B, 10)


def loss_fn(model: TreeNet, trees: list) -> torch.Tensor:
    """Cross-entropy at every node, not just the root: each subtree's vector must give its own
    value mod 10 (the Stanford Sentiment Treebank's recipe, a label per phrase). Each operator
    MLP is then taught its 10 x 10 table directly; with the root alone, 300 steps of depth-2
    trees reach ~0.3 held-out accuracy instead of ~0.95."""
    nodes = []
    for tree in trees:
        model.encode(tree, nodes)  # one graph for the whole batch, its shape the trees' shapes
    targets = torch.tensor([label(t) for tree in trees for t in subtrees(tree)])  # (N,)
    return F.cross_entropy(model.head(torch.cat(nodes)), targets)  # (N, dim) -> (N, 10)


@torch.no_grad()
def accuracy(model: nn.Module, trees: list) -> float:
    """The fraction of expressions whose value mod 10 the model predicts (the root's label)."""
    model.eval()
    labels = torch.tensor([label(t) for t in trees])
    return (model(trees).argmax(1) == labels).float().mean().item()


def train(
    model: TreeNet,
    rng: random.Random,
    steps: int,
    depth: int,
    held_out: list,
    batch_size: int = 32,
    lr: float = 3e-3,
    log_every: int = 0,
) -> None:
    """Adam on fresh random trees, none of them in `held_out`. The learning rate decays to 0
    (cosine), which also stops the loss spikes Adam has at a constant rate near zero loss."""
    seen = set(held_out)  # trees are nested tuples, so hashable
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        trees = []
        while len(trees) < batch_size:
            tree = random_tree(rng, rng.randint(1, depth))
            if tree not in seen:
                trees.append(tree)
        model.train()
        loss = loss_fn(model, trees)  # records a new graph...
        opt.zero_grad()
        loss.backward()  # ...which this walks once and frees
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps):
            print(
                f"step {step:5d}  loss {sum(losses) / len(losses):.3f}"
                f"  held-out acc {accuracy(model, held_out):.3f}"
                f"  {time.perf_counter() - start:5.1f} s"
            )
            losses = []


def bag_of_tokens_accuracy(train_trees: list, test_trees: list, epochs: int = 20) -> float:
    """Held-out accuracy of an MLP on token counts (B, 13): the baseline that knows which
    digits and operators occur, and how often, but not how they nest."""
    vocab = {**{d: d for d in range(10)}, **{op: 10 + i for i, op in enumerate(OPS)}}

    def counts(trees: list) -> torch.Tensor:
        rows = [[0] * len(vocab) for _ in trees]
        for row, tree in zip(rows, trees, strict=True):
            for t in subtrees(tree):
                row[vocab[t if isinstance(t, int) else t[0]]] += 1
        return torch.tensor(rows, dtype=torch.float)

    x, y = counts(train_trees), torch.tensor([label(t) for t in train_trees])
    mlp = nn.Sequential(nn.Linear(len(vocab), 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(256):
            loss = F.cross_entropy(mlp(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        test_labels = torch.tensor([label(t) for t in test_trees])
        return (mlp(counts(test_trees)).argmax(1) == test_labels).float().mean().item()


def count_nodes(grad_fn) -> int:
    """Distinct autograd nodes reachable from `grad_fn` (AccumulateGrad nodes included)."""
    seen, stack = set(), [grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:  # None: an input that needs no gradient
            continue
        seen.add(node)
        stack += [fn for fn, _ in node.next_functions]
    return len(seen)


def print_graph(grad_fn, names: dict, max_depth: int = 12, depth: int = 0, seen=None) -> None:
    """grad_fn names as an indented tree; `names` maps id(parameter) -> its name. A node with
    two consumers is printed once, then marked: backward adds the gradients from both."""
    seen = set() if seen is None else seen
    if grad_fn is None or depth > max_depth:
        return
    name = type(grad_fn).__name__
    if hasattr(grad_fn, "variable"):  # an AccumulateGrad: name the parameter it writes to
        name += f" -> {names.get(id(grad_fn.variable), '?')}.grad"
    if grad_fn in seen:
        print(f"  {'  ' * depth}{name} (again: gradients summed)")
        return
    seen.add(grad_fn)
    print(f"  {'  ' * depth}{name}")
    for fn, _ in grad_fn.next_functions:
        print_graph(fn, names, max_depth, depth + 1, seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--depth", type=int, default=4, help="most levels of operators")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # tiny ops: more threads only add overhead
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    # At least 2 levels: there are only 300 one-operator trees, and training should see them.
    held_out = make_data(rng, 1000, args.depth, min_depth=2)
    deeper = deep_trees(rng, 1000, args.depth + 2)  # deeper than any training tree
    tree = held_out[0]
    print(f"an expression: {to_text(tree)} = {evaluate(tree)}, label {label(tree)}")
    labels = torch.tensor([label(t) for t in held_out])
    print(f"majority class     held-out acc {labels.bincount().max().item() / len(labels):.3f}")
    bag = bag_of_tokens_accuracy(make_data(rng, 20000, args.depth), held_out)
    print(f"bag-of-tokens MLP  held-out acc {bag:.3f}")

    model = TreeNet(args.dim)
    train(model, rng, args.steps, args.depth, held_out, log_every=max(1, args.steps // 10))
    print(f"TreeNet            held-out acc {accuracy(model, held_out):.3f}")
    print(f"TreeNet on depth-{args.depth + 2} trees   acc {accuracy(model, deeper):.3f}")

    # One graph per input, its size the tree's: 7 nodes per operator (cat, 2 x (t, addmm), relu,
    # tanh), 1 per digit (slice), 4 AccumulateGrad per kind of operator used, 8 for the rest.
    print("graph nodes = 7 per operator + 1 per digit + 4 per kind of operator + 8:")
    small, large = ("+", 3, 4), deeper[0]
    for tree in (small, large):
        n_ops, kinds = count_ops(tree), len({t[0] for t in subtrees(tree) if isinstance(t, tuple)})
        n_nodes = count_nodes(loss_fn(model, [tree]).grad_fn)
        print(f"  {n_nodes:3d} = 7 * {n_ops} + {n_ops + 1} + 4 * {kinds} + 8  {to_text(tree)}")
    loss = loss_fn(model, [small])
    print(f"the graph of {to_text(small)}'s loss, from loss.grad_fn down:")
    print_graph(loss.grad_fn, {id(p): n for n, p in model.named_parameters()})
    root = model.encode(small)  # (1, dim), made by the root's tanh
    saved = root.grad_fn._saved_result  # what TanhBackward0 needs: d tanh(x) = 1 - tanh(x)^2
    print(f"{root.grad_fn.name()} saves its output: _saved_result {tuple(saved.shape)}")
    loss.backward()
    try:
        loss.backward()
    except RuntimeError as e:
        print(f"a second backward() fails, the graph is freed: {str(e).split('.')[0]}")


if __name__ == "__main__":
    main()
