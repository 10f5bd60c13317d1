"""shared/attention.py (notebook 03) against PyTorch's fused scaled_dot_product_attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from shared.attention import (MultiHeadAttention, attention_weights, causal_mask, merge_heads,
                              scaled_dot_product_attention, split_heads)

SHAPES = [  # (batch dims, Tq, Tk, head_dim)
    ((), 1, 1, 4),
    ((2,), 5, 5, 8),
    ((2, 3), 7, 7, 16),
    ((1, 4), 3, 11, 32),      # fewer queries than keys: KV-cache decoding
    ((3, 2), 1, 9, 8),        # one new token against a cache
    ((2, 1), 6, 6, 64),
]


def _qkv(batch, Tq, Tk, hs, dtype=torch.float64, seed=0, hv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, Tq, hs, generator=g, dtype=dtype)
    k = torch.randn(*batch, Tk, hs, generator=g, dtype=dtype)
    v = torch.randn(*batch, Tk, hv or hs, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("batch,Tq,Tk,hs", SHAPES)
def test_equals_torch_without_mask(batch, Tq, Tk, hs):
    q, k, v = _qkv(batch, Tq, Tk, hs)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("batch,Tq,Tk,hs", SHAPES)
def test_equals_torch_causal_bottom_right(batch, Tq, Tk, hs):
    q, k, v = _qkv(batch, Tq, Tk, hs, seed=1)
    # Explicit bottom-right mask: query i is at absolute position Tk - Tq + i and sees keys j <= that position.
    i, j = torch.arange(Tq)[:, None], torch.arange(Tk)[None, :]
    explicit = j <= (Tk - Tq + i)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=explicit)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True), expected)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=causal_mask(Tq, kv_len=Tk)), expected)
    if Tq == Tk:  # square: torch's own is_causal (top-left) is the same thing
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                                   F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_causal_decode_matches_full_sequence():
    # Attending with the last 3 queries against all 8 keys equals the last 3 rows of full causal attention.
    q, k, v = _qkv((2, 3), 8, 8, 16, seed=2)
    full = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q[..., -3:, :], k, v, is_causal=True), full[..., -3:, :])


def test_float32_close_to_torch_and_value_dim_may_differ():
    q, k, v = _qkv((2, 2), 6, 6, 8, dtype=torch.float32, hv=12)
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.shape == (2, 2, 6, 12)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-5)


def test_padding_mask_broadcasts_and_combines_with_causal():
    q, k, v = _qkv((2, 3), 5, 5, 8, seed=3)
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[0, ..., 3:] = False                        # first sequence: the last two keys are padding
    combined = keep & causal_mask(5)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=keep, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=combined))


def test_attention_weights_rows_are_distributions_and_causal_zeros():
    q, k, _ = _qkv((2,), 6, 6, 8, seed=4)
    w = attention_weights(q, k, is_causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6, dtype=w.dtype))
    assert (w.triu(diagonal=1) == 0).all()
    expected = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~causal_mask(6), -math.inf), -1)
    torch.testing.assert_close(w, expected)


def test_causal_mask_values():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, kv_len=4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(4).dtype == torch.bool


def test_dropout_only_in_training():
    q, k, v = _qkv((2,), 5, 5, 8, dtype=torch.float32)
    eval_out = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    torch.testing.assert_close(eval_out, scaled_dot_product_attention(q, k, v))
    torch.manual_seed(0)
    train_out = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True)
    assert not torch.allclose(train_out, eval_out)


@pytest.mark.parametrize("B,T,C,nh", [(2, 5, 12, 3), (1, 1, 8, 8), (3, 7, 64, 4), (2, 4, 6, 1)])
def test_split_merge_round_trip(B, T, C, nh):
    x = torch.randn(B, T, C)
    heads = split_heads(x, nh)
    assert heads.shape == (B, nh, T, C // nh)
    # head h holds channels h*hs .. (h+1)*hs - 1
    hs = C // nh
    for h in range(nh):
        torch.testing.assert_close(heads[:, h], x[..., h * hs:(h + 1) * hs])
    torch.testing.assert_close(merge_heads(heads), x)
    y = torch.randn(B, nh, T, hs)
    torch.testing.assert_close(split_heads(merge_heads(y), nh), y)


def test_multi_head_attention_equals_torch_multihead():
    torch.manual_seed(0)
    d, nh = 16, 4
    ours = MultiHeadAttention(d, nh).double()
    ref = torch.nn.MultiheadAttention(d, nh, batch_first=True).double()
    with torch.no_grad():  # copy our projections into torch's module (it packs q, k, v in one matrix)
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 7, d, dtype=torch.float64)
    # torch's attn_mask is True where attention is *not* allowed
    expected, _ = ref(x, x, x, attn_mask=~causal_mask(7), need_weights=False)
    torch.testing.assert_close(ours(x, is_causal=True), expected)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x, is_causal=False), expected)


def test_multi_head_attention_is_causal():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 6, 16)
    y = mha(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 16)               # changing the future ...
    torch.testing.assert_close(mha(x2)[:, :4], y[:, :4])   # ... leaves the past untouched


def test_gradients_match_torch():
    q, k, v = (t.requires_grad_() for t in _qkv((2, 2), 5, 5, 8, seed=5))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    g = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    (scaled_dot_product_attention(q, k, v, is_causal=True) * g).sum().backward()
    (F.scaled_dot_product_attention(q2, k2, v2, is_causal=True) * g).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad)


def test_bad_input_raises_clear_errors():
    q, k, v = _qkv((2,), 4, 4, 8)
    with pytest.raises(ValueError, match="last"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of positions"):
        scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="shape"):
        scaled_dot_product_attention(torch.randn(8, dtype=q.dtype), k, v)
    with pytest.raises(ValueError, match="do not broadcast"):
        scaled_dot_product_attention(torch.randn(3, 4, 8, dtype=q.dtype), k, v)
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, k, v, mask=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="more queries than keys"):
        scaled_dot_product_attention(torch.randn(2, 5, 8, dtype=q.dtype), k, v, is_causal=True)
    with pytest.raises(ValueError, match="same dtype"):
        scaled_dot_product_attention(q.float(), k, v)
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    # split_heads and merge_heads are internal: MultiHeadAttention checks the width; a wrong rank fails to unpack
    with pytest.raises(AssertionError, match="n_head=4"):
        split_heads(torch.randn(2, 3, 10), 4)
    with pytest.raises(ValueError, match="unpack"):
        split_heads(torch.randn(3, 10), 2)
    with pytest.raises(ValueError, match="unpack"):
        merge_heads(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="expected x"):
        MultiHeadAttention(8, 2)(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="kv_len"):
        causal_mask(5, kv_len=3)
