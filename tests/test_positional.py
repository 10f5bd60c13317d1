"""shared/positional.py (notebook 04): sinusoidal against the 2017 formula, RoPE's properties, learned table."""
import math

import pytest
import torch

from shared.positional import (LearnedPositionalEmbedding, apply_rope, apply_rope_complex, rope_angles,
                               sinusoidal_encoding)


@pytest.mark.parametrize("max_len,dim", [(1, 2), (50, 16), (128, 64), (7, 5)])
def test_sinusoidal_matches_2017_formula(max_len, dim):
    pe = sinusoidal_encoding(max_len, dim)
    assert pe.shape == (max_len, dim) and pe.dtype == torch.float32
    for p in range(max_len):
        for c in range(dim):
            i = c // 2
            angle = p / 10000 ** (2 * i / dim)
            expected = math.sin(angle) if c % 2 == 0 else math.cos(angle)
            assert abs(pe[p, c].item() - expected) < 1e-6, (p, c)


def test_sinusoidal_known_values():
    pe = sinusoidal_encoding(3, 4)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(pe[1], torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]))


def test_rope_angles_formula():
    angles = rope_angles(torch.arange(6), 8, base=100.0)
    assert angles.shape == (6, 4) and angles.dtype == torch.float32
    assert rope_angles(torch.arange(6), 8, dtype=torch.float64).dtype == torch.float64
    for p in range(6):
        for i in range(4):
            assert abs(angles[p, i].item() - p * 100.0 ** (-2 * i / 8)) < 1e-5


def _rope_reference(x, positions, base=10000.0):
    """RoPE written out pair by pair with math.cos/math.sin (slow, independent of the library)."""
    out = x.clone()
    hd = x.shape[-1]
    for t, p in enumerate(positions):
        for i in range(hd // 2):
            theta = p * base ** (-2 * i / hd)
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * math.cos(theta) - b * math.sin(theta)
            out[..., t, 2 * i + 1] = a * math.sin(theta) + b * math.cos(theta)
    return out


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 7, 16), (1, 4, 2)])
def test_rope_real_complex_and_reference_agree(shape):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(3, 3 + shape[-2])
    angles = rope_angles(positions, shape[-1])
    real, cplx = apply_rope(x, angles), apply_rope_complex(x, angles)
    torch.testing.assert_close(real, cplx)
    torch.testing.assert_close(real, _rope_reference(x, positions.tolist()), atol=1e-5, rtol=1e-5)


def test_rope_preserves_norms_and_position_zero_is_identity():
    x = torch.randn(2, 4, 10, 32)
    rotated = apply_rope(x, rope_angles(torch.arange(10), 32))
    # every pair is rotated, so each pair's length -- and hence the vector's norm -- is unchanged
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated.view(2, 4, 10, 16, 2).norm(dim=-1), x.view(2, 4, 10, 16, 2).norm(dim=-1))
    torch.testing.assert_close(rotated[..., 0, :], x[..., 0, :])
    assert not torch.allclose(rotated[..., 1:, :], x[..., 1:, :])


def test_rope_dot_product_depends_only_on_offset():
    g = torch.Generator().manual_seed(1)
    hd = 16
    q, k = torch.randn(hd, dtype=torch.float64, generator=g), torch.randn(hd, dtype=torch.float64, generator=g)

    def score(m, n):
        qm = apply_rope(q[None], rope_angles(torch.tensor([m]), hd, dtype=torch.float64))[0]
        kn = apply_rope(k[None], rope_angles(torch.tensor([n]), hd, dtype=torch.float64))[0]
        return (qm @ kn).item()

    for offset in (0, 1, 5, 37):
        scores = [score(m, m - offset) for m in (offset, offset + 3, offset + 100, offset + 1000)]
        assert max(scores) - min(scores) < 1e-9 * (1 + abs(scores[0])), (offset, scores)
    # ... and it does depend on the offset
    assert abs(score(10, 9) - score(10, 2)) > 1e-3


def test_rope_preserves_dtype():
    angles = rope_angles(torch.arange(4), 8)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        x = torch.randn(2, 4, 8).to(dtype)
        assert apply_rope(x, angles).dtype == dtype
        assert apply_rope_complex(x, angles).dtype == dtype
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(apply_rope(x.bfloat16(), angles).float(), apply_rope(x, angles), atol=0.05, rtol=0.02)


def test_learned_positional_embedding():
    torch.manual_seed(0)
    table = LearnedPositionalEmbedding(8, 4)
    out = table(torch.arange(5))
    assert out.shape == (5, 4)
    torch.testing.assert_close(out, table.weight[:5])
    out.sum().backward()            # only the looked-up rows receive gradient
    assert (table.weight.grad[:5] == 1).all() and (table.weight.grad[5:] == 0).all()


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="even"):
        rope_angles(torch.arange(4), 7)
    with pytest.raises(ValueError, match="1-D"):
        rope_angles(torch.zeros(2, 3, dtype=torch.long), 8)
    angles = rope_angles(torch.arange(4), 8)
    with pytest.raises(ValueError, match="even head_dim"):
        apply_rope(torch.randn(4, 7), angles)
    with pytest.raises(ValueError, match="angles must be"):
        apply_rope(torch.randn(5, 8), angles)                       # 5 positions, 4 angle rows
    with pytest.raises(ValueError, match="angles must be"):
        apply_rope_complex(torch.randn(4, 16), angles)              # head_dim 16, angles for 8
    with pytest.raises(ValueError, match="outside the learned table"):
        LearnedPositionalEmbedding(8, 4)(torch.arange(9))
    with pytest.raises(ValueError, match="1-D integer"):
        LearnedPositionalEmbedding(8, 4)(torch.zeros(3))
    with pytest.raises(ValueError, match="max_len"):
        sinusoidal_encoding(0, 8)
