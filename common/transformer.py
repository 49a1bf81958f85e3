"""The transformer pieces the vision and text projects share: attention, a pre-norm block,
stochastic depth, and the usual initialization. Plain nn.Modules."""

import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention: one Linear makes q, k and v for all heads at once.

    `mask` (optional, bool, broadcastable to (B, heads, N, N), True = may attend) hides keys,
    e.g. a text batch's padding as (B, 1, 1, N): padded keys then get weight exactly 0.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, mask=None):  # (B, N, D) -> (B, N, D)
        B, N, D = x.shape
        # (B, N, 3D) -> (3, B, heads, N, D/heads)
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # softmax(q k^T / sqrt(d)) v; on a GPU this runs a flash or memory-efficient kernel,
        # which never materialises the (N, N) attention matrix.
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, heads, N, D/heads)
        x = x.transpose(1, 2).reshape(B, N, D)  # concatenate the heads
        return self.proj_drop(self.proj(x))


def drop_path(x, p: float, training: bool):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch for some samples.

    Each sample keeps the branch with probability 1 - p, scaled by 1 / (1 - p) so that its
    expectation is unchanged; p = 1 always drops it. The identity in eval mode.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty(x.shape[0], *(1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
    return x * mask.div_(keep) if keep > 0 else x * mask


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x)).

    Pre-norm keeps the residual stream an identity path from input to output, which is what
    makes deep stacks trainable without warmup tricks. `drop_rate` is dropout after the
    attention projection and inside the MLP; `drop_path_rate` is stochastic depth.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.drop_path = drop_path_rate
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_drop_rate, drop_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, dim),
            nn.Dropout(drop_rate),
        )

    def forward(self, x, mask=None):  # (B, N, D) -> (B, N, D)
        x = x + drop_path(self.attn(self.norm1(x), mask), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def init_weights(m: nn.Module):
    """timm's and BERT's: N(0, 0.02) Linear and embedding weights keep the initial residual
    branches small; zero biases, unit LayerNorms, a zero padding embedding. Use with
    `module.apply(init_weights)`; convolutions keep PyTorch's default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
