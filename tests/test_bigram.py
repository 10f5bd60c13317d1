"""shared/bigram.py (chapter 1, notebook 01): the count-based bigram baseline and its perplexity."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.bigram import BigramModel, CharTokenizer, as_token_ids, perplexity

# A 6-character text, worked by hand. Tokens: a=0, b=1, c=2, d=3 (V = 4).
# Adjacent pairs: ab, bc, ca, ab, bd  ->  c(a,b)=2, c(b,c)=1, c(b,d)=1, c(c,a)=1; c(a)=2, c(b)=2, c(c)=1, c(d)=0.
TEXT = "abcabd"


def _model(k=1.0):
    tok = CharTokenizer(TEXT)
    return tok, BigramModel(tok.vocab_size, k=k).fit(tok.encode(TEXT))


def test_counts_match_the_hand_count():
    tok, m = _model()
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 1], expected[1, 2], expected[1, 3], expected[2, 0] = 2, 1, 1, 1
    assert tok.chars == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(m.count_matrix(), expected)
    np.testing.assert_array_equal(m.row_counts, [2, 2, 1, 0])


def test_perplexity_on_the_training_text_equals_hand_computation():
    tok, m = _model(k=1.0)
    # add-1: P(b|a) = (2+1)/(2+4) = 1/2, P(c|b) = (1+1)/(2+4) = 1/3, P(a|c) = (1+1)/(1+4) = 2/5,
    #        P(b|a) = 1/2, P(d|b) = 1/3.  Five predictions (the first character has no predecessor).
    nll = -(math.log(1 / 2) + math.log(1 / 3) + math.log(2 / 5) + math.log(1 / 2) + math.log(1 / 3)) / 5
    assert m.nll(tok.encode(TEXT)) == pytest.approx(nll, rel=1e-12)
    assert m.perplexity(tok.encode(TEXT)) == pytest.approx(math.exp(nll), rel=1e-12)
    assert m.perplexity(tok.encode(TEXT)) == pytest.approx((1 / 2 * 1 / 3 * 2 / 5 * 1 / 2 * 1 / 3) ** (-1 / 5))


def test_perplexity_on_held_out_text_with_unseen_pairs_and_k_half():
    tok, m = _model(k=0.5)
    # "dab": P(a|d) = (0+0.5)/(0+2) = 1/4 (d was never a previous token), P(b|a) = (2+0.5)/(2+2) = 5/8.
    expected = math.exp(-(math.log(1 / 4) + math.log(5 / 8)) / 2)
    assert m.perplexity(tok.encode("dab")) == pytest.approx(expected, rel=1e-12)
    # "ac" was never seen: P(c|a) = 0.5/4 = 1/8.
    assert m.perplexity(tok.encode("ac")) == pytest.approx(8.0, rel=1e-12)


def test_rows_are_distributions_and_match_log_probs():
    tok, m = _model(k=0.3)
    for a in range(4):
        p = m.next_probs(a)
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    ids = tok.encode("abcdabca")
    expected = [math.log(m.next_probs(a)[b]) for a, b in zip(ids[:-1], ids[1:])]
    np.testing.assert_allclose(m.log_probs(ids), expected, rtol=1e-12)


def test_sparse_scoring_equals_dense_cross_entropy_on_random_data():
    # The sparse count lookup must equal the textbook dense computation: cross-entropy of log(table) rows.
    rng = np.random.default_rng(0)
    V, k = 300, 0.05
    train, val = rng.integers(0, V, 5000), rng.integers(0, V, 800)
    m = BigramModel(V, k=k).fit(train)
    dense = np.zeros((V, V))
    np.add.at(dense, (train[:-1], train[1:]), 1)
    log_table = torch.tensor(np.log((dense + k) / (dense.sum(1, keepdims=True) + k * V)))
    reference = F.nll_loss(log_table[torch.tensor(val[:-1])], torch.tensor(val[1:])).item()
    assert m.nll(val) == pytest.approx(reference, rel=1e-10)
    np.testing.assert_array_equal(m.count_matrix(), dense.astype(np.int64))
    assert m.pair_count([0, 1], [5, 7]).tolist() == [dense[0, 5], dense[1, 7]]


def test_large_vocabulary_stays_sparse():
    m = BigramModel(50_257, k=0.01).fit(np.array([50_256, 0, 50_256, 0, 17]))
    assert len(m.pair_keys) == 3  # (50256, 0) twice, (0, 50256), (0, 17)
    assert m.next_counts(50_256)[0] == 2 and m.next_counts(0).sum() == 2
    assert m.next_probs(0)[17] == pytest.approx((1 + 0.01) / (2 + 0.01 * 50_257))
    with pytest.raises(ValueError, match="too large"):
        m.count_matrix()


def test_uniform_limit_and_perplexity_helper():
    # With a huge k every row becomes uniform: perplexity -> V.
    tok, m = _model(k=1e12)
    assert m.perplexity(tok.encode(TEXT)) == pytest.approx(4.0, rel=1e-9)
    assert perplexity(math.log(50_257)) == pytest.approx(50_257)
    assert perplexity(0.0) == 1.0


def test_sampling_is_seeded_and_follows_the_counts():
    tok = CharTokenizer("abc")
    m = BigramModel(3, k=1e-12).fit(tok.encode("abc" * 20))
    assert tok.decode(m.sample(tok.stoi["a"], 8, seed=0)) == "abcabcabc"  # the only seen continuations
    m.k = 1.0
    s1, s2 = m.sample(0, 50, seed=3), m.sample(0, 50, seed=3)
    assert np.array_equal(s1, s2) and len(s1) == 51 and s1.min() >= 0 and s1.max() < 3
    assert not np.array_equal(s1, m.sample(0, 50, seed=4))


def test_char_tokenizer_round_trip():
    tok = CharTokenizer("hello, world\n")
    assert tok.vocab_size == len(set("hello, world\n"))
    assert tok.decode(tok.encode("world, hello")) == "world, hello"
    assert tok.encode("").shape == (0,)


@pytest.mark.parametrize("k", [0, -1.0, float("nan"), float("inf")])
def test_non_positive_smoothing_is_rejected(k):
    with pytest.raises(ValueError, match="smoothing k must be a positive"):
        BigramModel(4, k=k)
    _, m = _model()
    with pytest.raises(ValueError, match="smoothing k must be a positive"):
        m.k = k


def test_bad_input_raises_clear_errors():
    tok, m = _model()
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 4\)"):
        m.fit([0, 1, 4])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.nll([0, -1, 2])
    with pytest.raises(ValueError, match="1-D"):
        m.nll(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        m.fit(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        m.fit([1])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        m.perplexity([1])
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        BigramModel(0)
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        BigramModel(2.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.sample(7, 3)
    with pytest.raises(ValueError, match="num_tokens"):
        m.sample(0, -1)
    with pytest.raises(ValueError, match=r"character 'z' is not in"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="1-D"):
        as_token_ids(3, 10)
