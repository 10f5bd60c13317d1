"""shared.generation (notebook ch03_model/04_generation): sampling filters, cached == uncached decoding, stop tokens,
batching, streaming."""
import pytest
import torch

from shared.generation import (generate, generate_batch, left_pad, sample_next_token, stream_text, stream_tokens,
                               top_k_filter, top_p_filter)
from shared.model import GPT, GPTConfig
from shared.registry import gpt2_encoding

# A hand-made distribution, deliberately not sorted: token 1 (0.5) > 3 (0.2) > 4 (0.15) > 2 (0.1) > 0 (0.05).
PROBS = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval()


# ---------------------------------------------------------------------------------------------- filters
@pytest.mark.parametrize("k, expected", [(1, {1}), (2, {1, 3}), (3, {1, 3, 4}), (4, {1, 3, 4, 2}), (5, set(range(5))),
                                         (50, set(range(5))), (None, set(range(5)))])
def test_top_k_keeps_exactly_the_k_most_likely(k, expected):
    assert kept(top_k_filter(PROBS.log(), k)) == expected


def test_top_k_keeps_ties_and_works_per_row():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0], [3.0, 0.0, 1.0, 2.0]])
    out = top_k_filter(logits, 1)
    assert kept(out[0]) == {1, 2}            # both share the largest value
    assert kept(out[1]) == {0}
    assert torch.equal(out[1, 0], logits[1, 0])   # kept logits are unchanged


@pytest.mark.parametrize("p, expected", [(0.1, {1}), (0.45, {1}), (0.6, {1, 3}), (0.75, {1, 3, 4}),
                                         (0.8, {1, 3, 4}), (0.9, {1, 3, 4, 2}), (0.97, set(range(5))),
                                         (1.0, set(range(5))), (None, set(range(5)))])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    # cumulative mass in order 1, 3, 4, 2, 0: 0.5, 0.7, 0.85, 0.95, 1.0
    assert kept(top_p_filter(PROBS.log(), p)) == expected


def test_top_p_per_row_and_scale_invariant():
    logits = torch.stack([PROBS.log(), PROBS.flip(0).log() * 1.0 + 7.0])   # a shift does not change the softmax
    out = top_p_filter(logits, 0.6)
    assert kept(out[0]) == {1, 3}
    assert kept(out[1]) == {3, 1}            # flipped: token 1 -> 3, token 3 -> 1


@pytest.mark.parametrize("call", [lambda: top_k_filter(PROBS, 0), lambda: top_k_filter(PROBS, -2),
                                  lambda: top_k_filter(PROBS, 2.5), lambda: top_p_filter(PROBS, 0.0),
                                  lambda: top_p_filter(PROBS, 1.5), lambda: sample_next_token(PROBS[None], -1.0),
                                  lambda: sample_next_token(PROBS, 1.0)])
def test_bad_sampling_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_sampling_follows_the_filtered_distribution():
    logits = PROBS.log().expand(20000, 5)
    g = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits, temperature=1.0, top_p=0.8, generator=g)
    assert set(draws.unique().tolist()) == {1, 3, 4}                     # never a filtered token
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    expected = torch.tensor([0, 0.5, 0, 0.2, 0.15]) / 0.85
    assert torch.allclose(freq, expected, atol=0.015)
    assert torch.equal(sample_next_token(logits[:3], temperature=0), torch.tensor([1, 1, 1]))   # greedy
    assert torch.equal(sample_next_token(logits[:3], top_k=1, generator=g), torch.tensor([1, 1, 1]))


def test_sampling_is_reproducible_with_a_seed():
    logits = torch.randn(4, 50)
    a = sample_next_token(logits, 0.9, top_k=10, generator=torch.Generator().manual_seed(3))
    b = sample_next_token(logits, 0.9, top_k=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- cached == uncached
@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                     dict(temperature=1.2, top_p=0.9)])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_cached_and_uncached_generation_are_identical(options, pos):
    torch.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=32, pos=pos)).eval()
    idx = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    # 40 new tokens > block_size: the window slides (and the cache is rebuilt) too
    cached = generate(m, idx, 40, use_cache=True, generator=torch.Generator().manual_seed(0), **options)
    uncached = generate(m, idx, 40, use_cache=False, generator=torch.Generator().manual_seed(0), **options)
    assert cached.shape == (3, 45)
    assert torch.equal(cached[:, :5], idx)
    assert torch.equal(cached, uncached)


def test_greedy_generation_is_the_argmax_of_the_full_forward(model):
    idx = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(5))
    out = generate(model, idx, 10, temperature=0)
    with torch.no_grad():
        for t in range(4, 14):   # every generated token is the argmax given everything before it
            assert torch.equal(out[:, t], model(out[:, :t])[0][:, -1].argmax(-1))


def test_generation_restores_training_mode_and_handles_zero_tokens(model):
    model.train()
    idx = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(generate(model, idx, 0), idx)
    generate(model, idx, 3, temperature=0)
    assert model.training
    model.eval()


@pytest.mark.parametrize("call", [lambda m: generate(m, torch.zeros(3, dtype=torch.long), 2),
                                  lambda m: generate(m, torch.zeros(1, 3), 2),
                                  lambda m: generate(m, torch.zeros(1, 3, dtype=torch.long), -1),
                                  lambda m: generate(m, torch.zeros(1, 3, dtype=torch.long), 2,
                                                     attention_mask=torch.ones(1, 4)),
                                  lambda m: generate_batch(m, [[1, 2], []], 2),
                                  lambda m: generate_batch(m, [[1, 2]], 2, attention_mask=None)])
def test_bad_generation_arguments_raise(model, call):
    with pytest.raises(ValueError):
        call(model)


# ---------------------------------------------------------------------------------------------- stop tokens
def test_stop_tokens_stop_each_row(model):
    idx = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(6))
    free = generate(model, idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))
    stop = int(free[0, 4 + 2])                               # row 0's third new token
    out = generate(model, idx, 12, temperature=1.0, stop_tokens=[stop], pad_id=-1,
                   generator=torch.Generator().manual_seed(1))
    for row in range(3):
        new = free[row, 4:].tolist()
        if stop in new:
            cut = new.index(stop) + 1
            assert out[row, 4:4 + cut].tolist() == new[:cut]          # same tokens up to and including the stop
            assert (out[row, 4 + cut:] == -1).all()                   # then padding
        else:
            assert out[row, 4:].tolist() == new[:out.size(1) - 4]
    assert out[0, 4 + 2] == stop


def test_the_stream_ends_when_every_row_has_stopped(model):
    idx = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(7))
    free = generate(model, idx, 10, temperature=0)
    stop = int(free[0, 4 + 3])
    first = free[0, 4:].tolist().index(stop)                 # greedy may produce it earlier
    out = generate(model, idx, 10, temperature=0, stop_tokens=[stop, 10**6])
    assert out.size(1) == 4 + first + 1 and int(out[0, -1]) == stop
    batch = generate_batch(model, [idx[0].tolist()], 10, temperature=0, stop_tokens=[stop])
    assert batch == [free[0, 4:4 + first + 1].tolist()]


# ---------------------------------------------------------------------------------------------- batching
def test_left_pad_builds_ids_and_mask():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_generation_equals_one_by_one(model, use_cache):
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    batched = generate_batch(model, prompts, 25, temperature=0, use_cache=use_cache)   # 7 + 25 > block_size 24
    one_by_one = [generate_batch(model, [p], 25, temperature=0, use_cache=use_cache)[0] for p in prompts]
    assert batched == one_by_one
    assert all(len(c) == 25 for c in batched)


def test_equal_length_batches_need_no_mask(model):
    prompts = [[1, 2, 3], [4, 5, 6]]
    ids = torch.tensor(prompts)
    assert generate_batch(model, prompts, 8, temperature=0) == generate(model, ids, 8, temperature=0)[:, 3:].tolist()


# ---------------------------------------------------------------------------------------------- streaming
def test_streaming_yields_the_same_tokens(model):
    idx = torch.randint(0, 97, (2, 3), generator=torch.Generator().manual_seed(9))
    opts = dict(temperature=0.9, top_k=20)
    stream = stream_tokens(model, idx, 15, generator=torch.Generator().manual_seed(4), **opts)
    first = next(stream)                                     # a generator: tokens arrive one step at a time
    assert first.shape == (2,)
    streamed = torch.stack([first] + list(stream), dim=1)
    full = generate(model, idx, 15, generator=torch.Generator().manual_seed(4), **opts)
    assert torch.equal(streamed, full[:, 3:])


def test_stream_text_never_splits_a_character():
    enc = gpt2_encoding()
    text = "naïve café — “quoted” 日本語 🙂 end"
    tokens = enc.encode_ordinary(text)
    assert any("\ufffd" in enc.decode([t]) for t in tokens)   # single tokens do split characters
    pieces = list(stream_text(tokens, enc.decode_single_token_bytes))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert list(stream_text((torch.tensor([t]) for t in tokens), enc.decode_single_token_bytes)) == pieces
