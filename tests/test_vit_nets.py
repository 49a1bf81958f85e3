"""The ViT nets: shapes, the maths the docstrings claim, the errors, the parameter budget."""

import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from projects.vit.nets import (
    Attention,
    Block,
    PatchEmbed,
    Resized,
    VisionTransformer,
    drop_path,
    torchvision_vit_b16,
)

# Small enough that every test runs in well under a second on a CPU.
TINY = dict(embed_dim=32, depth=2, num_heads=2)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("image_size,patch_size", [(28, 4), (32, 4), (32, 8)])
def test_output_shapes(pool, in_chans, image_size, patch_size):
    net = VisionTransformer(image_size, patch_size, in_chans, num_classes=7, pool=pool, **TINY)
    x = torch.randn(3, in_chans, image_size, image_size)
    assert net(x).shape == (3, 7)
    assert net.forward_features(x).shape == (3, 32)
    n = (image_size // patch_size) ** 2
    assert net.pos_embed.shape == (1, n + (pool == "cls"), 32)
    assert (net.cls_token is not None) == (pool == "cls")


def test_parameter_names_route_the_optimizer():
    names = [n for n, _ in VisionTransformer(**TINY).named_parameters()]
    for key in ("pos_embed", "cls_token", "patch_embed", "head"):
        assert any(key in n for n in names), key


def test_patch_embed_is_unfold_then_linear():
    torch.manual_seed(0)
    embed = PatchEmbed(image_size=32, patch_size=4, in_chans=3, embed_dim=16)
    x = torch.randn(2, 3, 32, 32)
    # Flatten each non-overlapping (C, p, p) patch, then one Linear shared by all patches.
    patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, N, C*p*p)
    w = embed.proj.weight.reshape(16, -1)  # (D, C*p*p), same (C, p, p) order as unfold
    expected = patches @ w.T + embed.proj.bias  # (B, N, D)
    torch.testing.assert_close(embed(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: Attention(32, 4), lambda: Block(32, 4)])
def test_attention_is_permutation_equivariant(make):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, 10, 32)  # (B, N, D), no position embeddings
    perm = torch.randperm(10)
    torch.testing.assert_close(layer(x[:, perm]), layer(x)[:, perm], rtol=1e-5, atol=1e-5)


def permute_patches(x, p: int, perm):
    """Shuffle the (p, p) patches of (B, C, H, W) images by perm (row-major patch order)."""
    B, C, H, W = x.shape
    patches = F.unfold(x, kernel_size=p, stride=p)  # (B, C*p*p, N)
    return F.fold(patches[:, :, perm], (H, W), kernel_size=p, stride=p)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_position_embeddings_break_patch_permutation_invariance(pool):
    torch.manual_seed(0)
    net = VisionTransformer(32, 8, pool=pool, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    shuffled = permute_patches(x, 8, torch.randperm(16))
    with torch.no_grad():
        assert not torch.allclose(net(x), net(shuffled), rtol=1e-4, atol=1e-4)
        # The control: without position embeddings the same model cannot tell the difference.
        net.pos_embed.zero_()
        torch.testing.assert_close(net(x), net(shuffled), rtol=1e-4, atol=1e-4)


def test_wrong_image_size_is_a_readable_error():
    net = VisionTransformer(32, 4, **TINY)
    with pytest.raises(
        ValueError, match="got 28x28 images, the model was built for 32x32 with patch 4"
    ):
        net(torch.randn(1, 3, 28, 28))


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match="image_size 30 is not divisible by patch_size 4"):
        VisionTransformer(30, 4, **TINY)


def test_bad_pool_and_heads_are_errors():
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean', got 'max'"):
        VisionTransformer(pool="max", **TINY)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        VisionTransformer(embed_dim=32, depth=1, num_heads=3)


def test_tiny_preset_parameter_count():
    # embed 192, depth 12, heads 3, patch 4, 32x32, 10 classes:
    #   patch embed 3*4*4*192 + 192           =     9,408
    #   cls token 192 + pos embed 65*192      =    12,672
    #   12 blocks x (qkv 192*576+576, proj 192*192+192, fc1 192*768+768, fc2 768*192+192,
    #                2 LayerNorms 4*192)      = 5,338,368  (~12*192^2 per block)
    #   final norm 2*192 + head 192*10+10     =     2,314
    # The small preset (384, 12, 6) has 21,342,346.
    with torch.device("meta"):  # shapes only: no memory, no init
        net = VisionTransformer(32, 4, 3, 10, embed_dim=192, depth=12, num_heads=3)
    assert n_params(net) == 5_362_762


def test_init_is_timm_like():
    net = VisionTransformer(**TINY)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            assert 0.015 < m.weight.std() < 0.025
            assert (m.bias == 0).all()
        elif isinstance(m, nn.LayerNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    assert 0.015 < net.pos_embed.std() < 0.025


def test_drop_path_rate_one_makes_a_block_the_identity_in_train_mode():
    torch.manual_seed(0)
    block = Block(32, 2, drop_path_rate=1.0)
    x = torch.randn(4, 5, 32)
    torch.testing.assert_close(block.train()(x), x)  # both residual branches always dropped
    assert not torch.allclose(block.eval()(x), x)  # eval mode keeps them


def test_drop_path_keeps_the_expectation_and_grows_over_depth():
    torch.manual_seed(0)
    x = torch.ones(20_000, 1, 1)
    out = drop_path(x, 0.25, training=True)
    assert out.unique().tolist() == pytest.approx([0.0, 4 / 3])  # dropped, or scaled by 1 / (1 - p)
    assert abs(out.mean().item() - 1) < 0.03
    net = VisionTransformer(depth=3, embed_dim=32, num_heads=2, drop_path_rate=0.2)
    assert [b.drop_path for b in net.blocks] == pytest.approx([0.0, 0.1, 0.2])


@pytest.fixture(scope="module")
def vit_b16():
    # 86M parameters, but at 32x32 only 4 patch tokens: building and running it takes ~1 s.
    return torchvision_vit_b16(num_classes=10, pretrained=False, image_size=32).eval()


def test_torchvision_vit_b16(vit_b16):
    assert isinstance(vit_b16, Resized) and vit_b16.size == 32
    assert vit_b16.net.heads.head.out_features == 10
    with torch.no_grad():
        assert vit_b16(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert vit_b16(torch.randn(2, 3, 16, 16)).shape == (2, 10)  # upsampled to 32 first


def test_resized_upsamples_before_the_net():
    seen = []
    net = Resized(nn.Identity(), 32)
    net.net.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    assert net(x) is x  # already the right size: untouched
    constant = torch.full((1, 1, 16, 16), 0.5)
    torch.testing.assert_close(net(constant), torch.full((1, 1, 32, 32), 0.5))
    assert seen == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 1, 32, 32)]


def test_pretrained_download_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="could not download") as info:
        torchvision_vit_b16(num_classes=10, pretrained=True)
    message = str(info.value)
    assert torch.hub.get_dir() in message and "pretrained=False" in message
    with pytest.raises(ValueError, match="224x224"):
        torchvision_vit_b16(num_classes=10, pretrained=True, image_size=32)
