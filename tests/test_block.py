"""Tests for shared/block.py (chapter 3, notebook 01): norms, attention backends, blocks."""
import pytest
import torch

from shared.attention import scaled_dot_product_attention
from shared.block import MLP, Block, CausalSelfAttention, RMSNorm, make_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rmsnorm_equals_torch(dtype):
    torch.manual_seed(0)
    ours, ref = RMSNorm(48, eps=1e-5).to(dtype), torch.nn.RMSNorm(48, eps=1e-5).to(dtype)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 7, 48, dtype=dtype) * 5 + 2
    torch.testing.assert_close(ours(x), ref(x))


def test_rmsnorm_bf16_keeps_dtype_and_is_close():
    torch.manual_seed(0)
    x = torch.randn(4, 64) * 30
    norm = RMSNorm(64)
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x), atol=2e-2, rtol=2e-2)


def test_make_norm():
    assert isinstance(make_norm("layernorm", 8), torch.nn.LayerNorm)
    assert make_norm("layernorm", 8, bias=False).bias is None
    assert isinstance(make_norm("rmsnorm", 8), RMSNorm)
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("batchnorm", 8)


def test_attention_asserts_what_the_config_checks():
    """GPTConfig gives the clear errors (tests/test_model.py); the layer behind it only asserts its invariants."""
    with pytest.raises(AssertionError, match="n_head=4"):
        CausalSelfAttention(30, 4)
    with pytest.raises(AssertionError, match="attn='flash'"):
        CausalSelfAttention(32, 4, attn="flash")


def test_attention_matches_explicit_computation():
    """The fused projection split into q, k, v and chapter 1's attention, written out by hand."""
    torch.manual_seed(0)
    att = CausalSelfAttention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    q, k, v = (t.view(2, 9, 4, 8).transpose(1, 2) for t in att.c_attn(x).split(32, dim=2))
    scores = (q @ k.transpose(-2, -1)) / 8 ** 0.5
    scores = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 32)
    torch.testing.assert_close(att(x), att.c_proj(y), atol=1e-6, rtol=1e-5)


def test_naive_and_sdpa_agree_with_decode_offset():
    """With cached keys in front (Tq < Tk) both backends align the causal mask bottom-right."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    sdpa, naive = CausalSelfAttention(32, 4, attn="sdpa"), CausalSelfAttention(32, 4, attn="naive")
    out_s, out_n = sdpa._attend(q, k, v, None), naive._attend(q, k, v, None)
    torch.testing.assert_close(out_s, out_n, atol=1e-6, rtol=1e-5)
    # the last query sees all 7 keys, the first only the first 5
    torch.testing.assert_close(out_s, scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-5)
    full = scaled_dot_product_attention(q[:, :, :1], k[:, :, :5], v[:, :, :5])
    torch.testing.assert_close(out_s[:, :, :1], full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_block_shapes_and_residual_structure(prenorm, norm):
    torch.manual_seed(0)
    block = Block(32, 4, norm=norm, prenorm=prenorm).eval()
    x = torch.randn(2, 5, 32)
    y = block(x)
    assert y.shape == x.shape
    if prenorm:  # with both sublayers silenced, a Pre-LN block is the identity (the residual stream passes through)
        for p in (block.attn.c_proj, block.mlp.c_proj):
            torch.nn.init.zeros_(p.weight), torch.nn.init.zeros_(p.bias)
        torch.testing.assert_close(block(x), x)
    else:        # a Post-LN block's output is normalised: mean 0, variance 1 per position (LayerNorm)
        if norm == "layernorm":
            torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_mlp_is_4x_wide_with_tanh_gelu():
    mlp = MLP(16)
    assert mlp.c_fc.weight.shape == (64, 16) and mlp.c_proj.weight.shape == (16, 64)
    x = torch.linspace(-4, 4, 50)
    torch.testing.assert_close(mlp.gelu(x), torch.nn.functional.gelu(x, approximate="tanh"))
