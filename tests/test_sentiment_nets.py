"""The sentiment nets: shapes, padding that changes nothing, word order, errors, a tiny fit."""

import pytest
import torch
import torch.nn.functional as F

from projects.sentiment.nets import (
    BagEncoder,
    RNNEncoder,
    SentimentNet,
    TransformerEncoder,
    padding_mask,
)

VOCAB = 20
# Small enough that every encoder runs in milliseconds on a CPU.
ENCODERS = {
    "lstm": lambda: RNNEncoder(VOCAB, embed_dim=16, hidden=8, drop_rate=0.0),
    "gru": lambda: RNNEncoder(VOCAB, embed_dim=16, hidden=8, cell="gru", drop_rate=0.0),
    "bag": lambda: BagEncoder(VOCAB, embed_dim=16, bigram_buckets=1024),
    "transformer": lambda: TransformerEncoder(
        VOCAB, max_length=32, embed_dim=16, depth=2, num_heads=2, drop_rate=0.0
    ),
}
OUT_DIMS = {"lstm": 16, "gru": 16, "bag": 16, "transformer": 16}


@pytest.fixture(autouse=True)
def one_thread():
    # Two shared cores: one thread per test avoids oversubscription and keeps timings stable.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def batch(B=4, T=9, seed=0):
    """Random texts: [CLS] (id 1) first, real ids in [2, VOCAB), pad id 0 after each length."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 1, 5, 3, 7, 2][:B])
    tokens = torch.randint(2, VOCAB, (B, T), generator=g)
    tokens[:, 0] = 1
    return tokens.masked_fill(~padding_mask(lengths, T), 0), lengths


def swap(tokens, i, j):
    out = tokens.clone()
    out[:, [i, j]] = tokens[:, [j, i]]
    return out


@pytest.mark.parametrize("name", ENCODERS)
def test_output_shapes(name):
    torch.manual_seed(0)
    enc = ENCODERS[name]()
    tokens, lengths = batch()
    assert enc.out_dim == OUT_DIMS[name]
    assert enc(tokens, lengths).shape == (4, OUT_DIMS[name])
    net = SentimentNet(enc, num_classes=3)
    assert net(tokens, lengths).shape == (4, 3)


def test_unidirectional_rnn_out_dim():
    enc = RNNEncoder(VOCAB, 16, 8, layers=2, cell="gru", bidirectional=False)
    assert enc.out_dim == 8
    assert enc(*batch()).shape == (4, 8)


@pytest.mark.parametrize("name", ENCODERS)
def test_extra_padding_changes_nothing(name):
    torch.manual_seed(0)
    enc = ENCODERS[name]().eval()
    tokens, lengths = batch()
    longer = torch.cat([tokens, torch.zeros(4, 5, dtype=torch.long)], dim=1)  # 5 more pads each
    with torch.no_grad():
        torch.testing.assert_close(enc(longer, lengths), enc(tokens, lengths), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru", "transformer"])
def test_padded_positions_get_no_gradient(name):
    torch.manual_seed(0)
    enc = ENCODERS[name]()
    embed = enc.embed if name != "transformer" else enc.tok_embed
    seen = {}

    def keep_output(module, inputs, out):
        out.retain_grad()
        seen["x"] = out

    embed.register_forward_hook(keep_output)
    tokens, lengths = batch()
    out = enc(tokens, lengths)
    # A random projection, not .sum(): a fresh LayerNorm's outputs sum to a constant over D.
    (out * torch.randn_like(out)).sum().backward()
    grad = seen["x"].grad.abs().sum(-1)  # (B, T)
    real = padding_mask(lengths, tokens.shape[1])
    assert (grad[~real] == 0).all()  # exactly: the padding never reaches the output
    assert (grad[real] > 0).all()  # while every real token does


@pytest.mark.parametrize("name", ["lstm", "gru", "transformer"])
def test_order_matters(name):
    torch.manual_seed(0)
    enc = ENCODERS[name]().eval()
    tokens, lengths = batch(B=1)
    assert tokens[0, 2] != tokens[0, 5]
    with torch.no_grad():
        assert not torch.allclose(enc(tokens, lengths), enc(swap(tokens, 2, 5), lengths))


def test_bag_without_bigrams_is_order_invariant_with_bigrams_not():
    torch.manual_seed(0)
    tokens, lengths = batch(B=1)
    shuffled = swap(tokens, 2, 5)
    with torch.no_grad():
        bag = BagEncoder(VOCAB, 16, bigrams=False)
        torch.testing.assert_close(bag(shuffled, lengths), bag(tokens, lengths))
        # Its output is the plain mean of the real tokens' rows.
        torch.testing.assert_close(bag(tokens, lengths)[0], bag.embed.weight[tokens[0]].mean(0))
        bag = BagEncoder(VOCAB, 16, bigram_buckets=1024)
        assert not torch.allclose(bag(shuffled, lengths), bag(tokens, lengths))


def test_bag_of_one_token_has_no_bigrams():
    bag = BagEncoder(VOCAB, 16, bigram_buckets=1024)
    tokens, lengths = torch.tensor([[1, 0, 0]]), torch.tensor([1])
    with torch.no_grad():
        torch.testing.assert_close(bag(tokens, lengths)[0], bag.embed.weight[1])


def test_too_long_is_a_readable_error():
    enc = TransformerEncoder(VOCAB, max_length=8, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="got sequences of 9 tokens.*max_length=8"):
        enc(*batch(T=9))


def test_bad_cell_and_heads_are_errors():
    with pytest.raises(ValueError, match="cell must be 'lstm' or 'gru', got 'rnn'"):
        RNNEncoder(VOCAB, cell="rnn")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TransformerEncoder(VOCAB, embed_dim=16, num_heads=3)


def order_task(n=128, T=10):
    """Label 1 iff token 5 comes before token 6; every text also appears with them swapped.

    The swapped copy has the same bag of words and the opposite label, so an order-blind model
    scores exactly 50% however long it trains, while the rest is random filler.
    """
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, T + 1, (n,), generator=g)
    filler = torch.tensor([2, 3, 4, *range(7, VOCAB)])
    tokens = filler[torch.randint(len(filler), (n, T), generator=g)]
    tokens[:, 0] = 1
    for i in range(n):
        p, q = (1 + torch.randperm(int(lengths[i]) - 1, generator=g)[:2]).tolist()
        tokens[i, p], tokens[i, q] = 5, 6
    tokens = tokens.masked_fill(~padding_mask(lengths, T), 0)
    labels = ((tokens == 5).int().argmax(1) < (tokens == 6).int().argmax(1)).long()
    swapped = tokens.clone()
    swapped[tokens == 5], swapped[tokens == 6] = 6, 5
    return (
        torch.cat([tokens, swapped]),
        torch.cat([lengths, lengths]),
        torch.cat([labels, 1 - labels]),
    )


def train_accuracy(encoder, lr, steps=100):
    tokens, lengths, labels = order_task()
    net = SentimentNet(encoder, drop_rate=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(net(tokens, lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (net.eval()(tokens, lengths).argmax(1) == labels).float().mean().item()


@pytest.mark.parametrize(
    "make,lr",
    [
        (lambda: RNNEncoder(VOCAB, embed_dim=16, hidden=32, drop_rate=0.0), 1e-2),
        (lambda: TransformerEncoder(VOCAB, 16, 32, 2, 2, mlp_ratio=2.0, drop_rate=0.0), 3e-3),
    ],
    ids=["lstm", "transformer"],
)
def test_order_aware_encoders_learn_an_order_rule(make, lr):
    torch.manual_seed(0)
    assert train_accuracy(make(), lr) > 0.9


def test_bag_without_bigrams_cannot_learn_it():
    torch.manual_seed(0)
    assert train_accuracy(BagEncoder(VOCAB, 16, bigrams=False), 1e-2) == 0.5
