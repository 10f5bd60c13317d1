"""Tests for shared/vocab_scaling.py (from ch02_data/05_vocab_scaling.ipynb)."""
from __future__ import annotations

import numpy as np
import pytest

from shared.bpe import BPETokenizer
from shared.vocab_scaling import bytes_per_token, token_counts, train_flops_per_token, transformer_params


def test_gpt2_small_has_124_439_808_parameters():
    p = transformer_params(768, 12, 50257)
    assert p["total"] == 124_439_808 and p["vocab"] == 50257 * 768
    assert transformer_params(768, 12, 50257, tied=False)["total"] == 124_439_808 + 50257 * 768


@pytest.mark.parametrize("d, n_layer, vocab, context, tied", [(64, 2, 300, 32, True), (96, 3, 1000, 64, False),
                                                               (768, 12, 8192, 1024, True)])
def test_params_formula_equals_the_models_count(d, n_layer, vocab, context, tied):
    model = pytest.importorskip("shared.model")
    config = model.GPTConfig(vocab_size=vocab, block_size=context, n_layer=n_layer, n_head=d // 32, n_embd=d,
                             tie_weights=tied)
    assert transformer_params(d, n_layer, vocab, context, tied)["total"] == model.num_parameters(config)
    if d <= 96:
        gpt = model.GPT(config)
        assert transformer_params(d, n_layer, vocab, context, tied)["total"] == gpt.num_params()


def test_train_flops_per_token_is_the_mfu_convention():
    d, L, V, T = 768, 12, 50257, 1024
    n_matmul = 12 * L * d * d + d * V                    # block weights + head (the embedding lookup is free)
    assert train_flops_per_token(d, L, V, T) == 6 * n_matmul + 12 * L * d * T
    assert train_flops_per_token(d, L, 2 * V, T) - train_flops_per_token(d, L, V, T) == 6 * d * V


def test_bytes_per_token_and_token_counts():
    tok = BPETokenizer.train("the cat sat on the mat " * 20, vocab_size=270)
    enc = tok.to_tiktoken()
    text = "the cat sat on the mat"
    assert bytes_per_token(enc, text) == pytest.approx(len(text) / len(enc.encode_ordinary(text)))
    counts = token_counts(enc, [text, text], tok.vocab_size)
    assert counts.sum() == 2 * len(enc.encode_ordinary(text)) and len(counts) == tok.vocab_size
    assert np.all(counts[enc.encode_ordinary(text)] >= 2)
