"""shared.evals.perplexity (notebook ch05_evaluation/01_perplexity): stride = context equals chunked evaluation,
every position is scored once with a smaller stride, bits per byte = NLL·tokens / (bytes·ln 2), a uniform model's
perplexity equals the vocabulary size."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.evals.perplexity import PerplexityResult, evaluate_perplexity, token_nlls, window_plan
from shared.model import GPT, GPTConfig
from shared.registry import gpt2_encoding

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 2


@pytest.fixture(scope="module")
def enc():
    return gpt2_encoding()


@pytest.fixture(scope="module")
def model(enc):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("n, context, stride", [(10, 4, 4), (10, 4, 1), (10, 4, 3), (100, 32, 7), (33, 32, 32),
                                                (5, 32, 16), (2, 4, 2)])
def test_every_position_is_scored_at_most_once_and_all_are_when_windows_overlap(n, context, stride):
    plan = window_plan(n, context, stride)
    scored = [p for _, end, first in plan for p in range(first, end)]
    assert len(scored) == len(set(scored)) and all(end - begin <= context for begin, end, _ in plan)
    assert all(begin < first for begin, _, first in plan)                  # a scored token always has context
    if stride < context:
        assert scored == list(range(1, n))


def test_bad_strides_are_refused():
    for stride in (0, 5):
        with pytest.raises(ValueError, match="stride"):
            window_plan(10, 4, stride)


def test_stride_equal_to_context_equals_chunked_evaluation(model, enc):
    ids = torch.tensor(enc.encode(TEXT))
    C = model.config.block_size
    _, nll = token_nlls(model, ids, stride=C)
    expected_sum, expected_count = 0.0, 0
    for start in range(0, len(ids), C):                    # each chunk alone, with the model's own loss
        chunk = ids[start:start + C][None]
        if chunk.size(1) < 2:
            continue
        _, loss = model(chunk[:, :-1], targets=chunk[:, 1:])
        expected_sum += loss.item() * (chunk.size(1) - 1)
        expected_count += chunk.size(1) - 1
    assert len(nll) == expected_count
    assert nll.sum().item() == pytest.approx(expected_sum, rel=1e-5)


def test_a_smaller_stride_scores_each_token_with_more_context_the_same_as_a_full_forward(model, enc):
    ids = torch.tensor(enc.encode(TEXT))[:20]             # shorter than the context: one window, all positions
    positions, nll = token_nlls(model, ids, stride=4)
    logits, _ = model(ids[None])
    full = F.cross_entropy(logits[0, :-1], ids[1:], reduction="none")
    assert positions.tolist() == list(range(1, 20))
    assert torch.allclose(nll.float(), full, atol=1e-5)


def test_batching_windows_changes_nothing(model, enc):
    ids = torch.tensor(enc.encode(TEXT))
    a = token_nlls(model, ids, stride=8, batch_size=1)
    b = token_nlls(model, ids, stride=8, batch_size=16)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)


def test_bits_per_byte_is_nll_times_tokens_over_bytes_ln2(model, enc):
    result = evaluate_perplexity(model, enc, TEXT, stride=16)
    assert result.tokens == len(enc.encode(TEXT))          # <|endoftext|> first: every text token is scored
    assert result.bytes == len(TEXT.encode("utf-8"))
    assert result.bits_per_byte == pytest.approx(result.mean_nll * result.tokens / (result.bytes * math.log(2)))
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))
    assert result.bits_per_token == pytest.approx(result.mean_nll / math.log(2))


class Uniform(nn.Module):
    def __init__(self, vocab_size, block_size=16):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, **_):
        return torch.zeros(*idx.shape, self.config.vocab_size), None


def test_a_uniform_models_perplexity_equals_the_vocabulary_size(enc):
    result = evaluate_perplexity(Uniform(enc.n_vocab), enc, TEXT, stride=8)
    assert result.perplexity == pytest.approx(enc.n_vocab, rel=1e-6)      # float32 log-softmax
    assert PerplexityResult(nll=10 * math.log(7), tokens=10, bytes=30).perplexity == pytest.approx(7)
