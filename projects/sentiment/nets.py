"""Text classifiers for sentiment: three encoders and a linear head, plain nn.Modules, no Lightning.

Every encoder takes the same batch and returns one vector per text:
    tokens  (B, T) int64, padded with pad id 0 at the END; position 0 of every text is [CLS]
    lengths (B,)   int64, the real lengths (>= 1: the [CLS] token is always there)
    -> (B, out_dim)
so SentimentNet can put any of them under the same head, and Hydra can swap them:
    net: {_target_: projects.sentiment.nets.SentimentNet,
          encoder: {_target_: projects.sentiment.nets.RNNEncoder, vocab_size: ...}}
None of them looks at what sits in the padded positions: adding more padding never changes the
output (the tests check it), so batches can be padded to any length.
"""

import torch
from torch import nn

from common.transformer import Block, init_weights

PAD = 0  # the pad id; the embeddings keep its row at zero and never give it a gradient


def padding_mask(lengths, T: int):
    """(B,) lengths -> (B, T) bool, True at the real tokens and False at the padding."""
    return torch.arange(T, device=lengths.device) < lengths[:, None]


class BagEncoder(nn.Module):
    """fastText (Joulin et al. 2017): the average of the token and hashed-bigram embeddings.

    A bag of words is blind to order ("not good" and "good, not" are the same bag); the bigrams
    bring back local order at the cost of one table row per hash bucket. Each bigram (a, b) of
    neighbouring real tokens goes to row vocab_size + (a * 1000003 + b) % bigram_buckets of the
    same table as the words, and the text is ONE mean over all its word and bigram rows (fastText's
    way: the two are averaged together, neither concatenated nor summed as separate means), so
    out_dim = embed_dim. Colliding bigrams share a row; with 2**18 buckets that is rare.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        bigrams: bool = True,
        bigram_buckets: int = 2**18,
    ):
        super().__init__()
        self.vocab_size, self.bigrams, self.bigram_buckets = vocab_size, bigrams, bigram_buckets
        self.out_dim = embed_dim
        rows = vocab_size + (bigram_buckets if bigrams else 0)
        # mode="mean" with offsets: a 1-D list of all the features of all texts, one bag per text,
        # so the padding is simply left out of the list rather than masked.
        self.embed = nn.EmbeddingBag(rows, embed_dim, mode="mean")
        # fastText's init: small uniform rows, so the initial mean is near zero whatever its size.
        nn.init.uniform_(self.embed.weight, -1.0 / embed_dim, 1.0 / embed_dim)

    def features(self, tokens, lengths):  # (B, T), (B,) -> ids (B, F), keep (B, F) bool
        """Each text's feature ids (its tokens, then its bigrams) and which of them are real."""
        T = tokens.shape[1]
        ids, keep = tokens, padding_mask(lengths, T)  # (B, T)
        if self.bigrams and T > 1:
            a, b = tokens[:, :-1], tokens[:, 1:]  # (B, T-1): the pairs (t_i, t_{i+1})
            hashed = self.vocab_size + (a * 1000003 + b) % self.bigram_buckets
            ids = torch.cat([ids, hashed], dim=1)  # (B, 2T-1)
            # A pair is real when its second token is: i + 1 < length.
            keep = torch.cat([keep, keep[:, 1:]], dim=1)
        return ids, keep

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, D)
        ids, keep = self.features(tokens, lengths)
        counts = keep.sum(dim=1)  # (B,) features per text
        offsets = counts.cumsum(0) - counts  # (B,) where each text's bag starts
        # Boolean indexing reads row by row, so each text's features stay together in order.
        return self.embed(ids[keep], offsets)  # (sum of counts,) -> (B, D)

    def exportable(self) -> nn.Module:
        return DenseBag(self)


class DenseBag(nn.Module):
    """BagEncoder's mean as a masked sum over the padded (B, F) features: the same function,
    with fixed shapes instead of `ids[keep]`'s data-dependent one, so torch.export traces it."""

    def __init__(self, bag: BagEncoder):
        super().__init__()
        self.bag = bag

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, D)
        ids, keep = self.bag.features(tokens, lengths)  # (B, F)
        rows = self.bag.embed.weight[ids] * keep[..., None]  # (B, F, D), the padding zeroed
        return rows.sum(dim=1) / keep.sum(dim=1, keepdim=True)


class RNNEncoder(nn.Module):
    """Embeddings -> packed LSTM or GRU -> the final hidden state of each direction, concatenated.

    Packing (pack_padded_sequence) runs each text for exactly its own length: the padding never
    enters the recurrence, so the forward direction's final state is the one after the real last
    token (not after a run of pads), and the backward direction STARTS at the real last token
    instead of reading the pads first. Without it the output would depend on how much padding the
    batch happened to have. out_dim = hidden * (2 if bidirectional else 1).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        hidden: int = 128,
        layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        drop_rate: float = 0.1,
    ):
        super().__init__()
        rnns = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in rnns:
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        self.cell = cell
        self.out_dim = hidden * (2 if bidirectional else 1)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.drop = nn.Dropout(drop_rate)
        # The RNN's own dropout acts between layers only (PyTorch warns if set with one layer).
        self.rnn = rnns[cell](
            embed_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=drop_rate if layers > 1 else 0.0,
        )

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, out_dim)
        x = self.drop(self.embed(tokens))  # (B, T, E)
        # The lengths must be on the CPU; enforce_sorted=False sorts (and unsorts) internally.
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.rnn(packed)  # h (layers * dirs, B, H), back in the batch's order
        if self.cell == "lstm":
            h = h[0]  # (h_n, c_n): the hidden state, not the cell state
        dirs = 2 if self.rnn.bidirectional else 1
        # The last layer's final states: forward after the last real token, backward after [CLS].
        return torch.cat(list(h[-dirs:]), dim=-1)  # (B, dirs * H)

    def exportable(self) -> nn.Module:
        return UnpackedRNN(self)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> each sequence's first `length` steps in reverse order, the padding after them
    left in place; its own inverse."""
    t = torch.arange(x.shape[1], device=x.device)  # (T,)
    ends = lengths[:, None] - 1  # (B, 1)
    index = torch.where(t < lengths[:, None], ends - t, t)  # (B, T)
    return x.gather(1, index[..., None].expand_as(x))


class UnpackedRNN(nn.Module):
    """RNNEncoder's function without packing, for torch.export (`pack_padded_sequence` does not
    trace): each direction of each layer becomes a one-way RNN holding its weights; the backward
    one reads every text reversed within its length (`reverse_within`), so it too starts at the
    last real token, and the final states are read at each text's last real step. The padding
    sits after the real steps of both, where a one-way RNN never looks back at it.

    torch.export decomposes the RNN into one step per position, which fixes the length of the
    traced graph: it takes texts padded to one length (`fixed_length`), the tokenizer's longest.
    """

    fixed_length = True

    def __init__(self, encoder: RNNEncoder):
        super().__init__()
        rnn = encoder.rnn
        self.embed, self.cell = encoder.embed, encoder.cell
        suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
        self.layers = nn.ModuleList()
        size = rnn.input_size
        for layer in range(rnn.num_layers):
            directions = nn.ModuleList()
            for suffix in suffixes:
                one = type(rnn)(size, rnn.hidden_size, batch_first=True)
                one.load_state_dict(
                    {
                        f"{w}_l0": getattr(rnn, f"{w}_l{layer}{suffix}")
                        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                    }
                )
                directions.append(one)
            self.layers.append(directions)
            size = rnn.hidden_size * len(suffixes)

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, dirs * H)
        x = self.embed(tokens)  # (B, T, E); dropout is off in eval mode
        last = (lengths - 1)[:, None, None]  # (B, 1, 1): each text's last real step
        for directions in self.layers:
            steps, finals = [], []
            for d, rnn in enumerate(directions):
                out, _ = rnn(x if d == 0 else reverse_within(x, lengths))  # (B, T, H)
                finals.append(out.gather(1, last.expand(-1, 1, out.shape[2]))[:, 0])  # (B, H)
                steps.append(out if d == 0 else reverse_within(out, lengths))
            x = torch.cat(steps, dim=-1)  # (B, T, dirs * H): the next layer's input
        return torch.cat(finals, dim=-1)


class TransformerEncoder(nn.Module):
    """BERT-style: token + learned position embeddings, pre-norm blocks, LayerNorm, [CLS] output.

    (B, T) tokens -> (B, T, D) -> depth blocks (padded keys masked) -> (B, D) at position 0.
    Attention alone is blind to order; the position embeddings (max_length of them) are what let
    the model tell "not good" from "good, not". Padded positions are still computed (they are
    queries like any other) but nothing real attends to them and only [CLS] is read out, so they
    never reach the output.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int = 512,
        embed_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.1,
    ):
        super().__init__()
        self.max_length = max_length
        self.out_dim = embed_dim
        self.tok_embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_length, embed_dim))
        self.drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, drop_rate) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, D)
        T = tokens.shape[1]
        if T > self.max_length:
            raise ValueError(
                f"got sequences of {T} tokens, the model has position embeddings for "
                f"max_length={self.max_length}: truncate the texts or build it with a larger "
                "max_length"
            )
        mask = padding_mask(lengths, T)[:, None, None, :]  # (B, 1, 1, T): keys only
        x = self.drop(self.tok_embed(tokens) + self.pos_embed[:, :T])  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)[:, 0]  # (B, D): the [CLS] token's output


class SentimentNet(nn.Module):
    """Any encoder above, dropout, then Linear(encoder.out_dim, num_classes): (B, T) -> logits."""

    def __init__(self, encoder: nn.Module, num_classes: int = 2, drop_rate: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, num_classes)
        return self.head(self.drop(self.encoder(tokens, lengths)))

    def exportable(self) -> nn.Module:
        """The same function in a form torch.export traces (eval mode only): an encoder that
        packs or bags by data-dependent shapes is swapped for its fixed-shape twin."""
        encoder = self.encoder
        if hasattr(encoder, "exportable"):
            encoder = encoder.exportable()
        return ExportableNet(encoder, self.head)


class ExportableNet(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, tokens, lengths):  # (B, T), (B,) -> (B, num_classes)
        return self.head(self.encoder(tokens, lengths))
