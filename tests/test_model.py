"""Tests for shared/model.py (chapter 3, notebook 02): config checks, parameter count, causality, attention
backends, activation checkpointing, the KV cache, padding, and that the model can learn real text."""
import dataclasses
import itertools
import math

import pytest
import torch

from shared.model import GPT, PRESETS, GPTConfig, KVCache, num_parameters, parameter_breakdown

torch.set_num_threads(min(2, torch.get_num_threads()))

VARIANTS = [dict(pos=p, norm=n, prenorm=pre, attn=a)
            for p, n, pre, a in itertools.product(("learned", "rope"), ("layernorm", "rmsnorm"), (True, False),
                                                  ("sdpa", "naive"))]


def variant_id(v):
    return f"{v['pos']}-{v['norm']}-{'pre' if v['prenorm'] else 'post'}-{v['attn']}"


def small_model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=100, n_head=8), "not divisible by n_head"),
    (dict(n_embd=48, n_head=16, pos="rope"), "head size must be even"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=-5), "vocab_size must be a positive integer"),
    (dict(block_size=2.5), "block_size must be a positive integer"),
    (dict(n_head=True), "n_head must be a positive integer"),
    (dict(pos="alibi"), "pos='alibi' is unknown"),
    (dict(norm="batchnorm"), "norm='batchnorm' is unknown"),
    (dict(attn="flash"), "attn='flash' is unknown"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(bias="yes"), "bias must be True or False"),
    (dict(pos="rope", rope_base=0.0), "rope_base must be positive"),
])
def test_invalid_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_a_checked_config_cannot_be_changed_into_an_unchecked_one():
    """GPT takes its config as valid because the config is frozen; a changed copy is checked again."""
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=10, block_size=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_head = 3
    with pytest.raises(ValueError, match="not divisible"):
        dataclasses.replace(cfg, n_head=3)
    assert dataclasses.replace(cfg, n_head=4).head_dim == 2


def test_presets():
    assert GPTConfig.from_preset("gpt2") == GPTConfig()
    cfg = GPTConfig.from_preset("laptop", dropout=0.1, pos="rope")
    assert (cfg.dropout, cfg.pos, cfg.n_embd) == (0.1, "rope", PRESETS["laptop"].n_embd)
    assert PRESETS["laptop"].dropout == 0.0  # the preset itself is untouched
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_preset("tiny", n_layers=3)
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig.from_preset("tiny", n_head=3)


# ------------------------------------------------------------------ parameter count and init

@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_formula_matches_every_preset(name):
    with torch.device("meta"):  # shapes only: the 1.5B preset allocates nothing
        model = GPT(PRESETS[name])
    assert num_parameters(PRESETS[name]) == sum(p.numel() for p in model.parameters()) == model.num_params()


def test_parameter_formula_known_values():
    # GPT-2 small and medium as published (tied head counted once)
    assert num_parameters(PRESETS["gpt2"]) == 124_439_808
    assert num_parameters(PRESETS["gpt2-medium"]) == 354_823_168


@pytest.mark.parametrize("overrides", [dict(pos="rope"), dict(norm="rmsnorm"), dict(bias=False),
                                       dict(tie_weights=False), dict(pos="rope", norm="rmsnorm", bias=False,
                                                                     tie_weights=False, prenorm=False)])
def test_parameter_formula_matches_variants(overrides):
    cfg = GPTConfig.from_preset("tiny", **overrides)
    model = GPT(cfg)
    assert num_parameters(cfg) == sum(p.numel() for p in model.parameters())
    assert sum(parameter_breakdown(cfg).values()) == num_parameters(cfg)


def test_gpt2_init_and_tied_head():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=8, n_head=4, n_embd=128)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    sd = model.state_dict()
    assert "transformer.wpe.weight" in sd and "transformer.h.7.mlp.c_fc.weight" in sd and "lm_head.weight" in sd
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(model.transformer.h[3].mlp.c_proj.weight.std().item() - scaled) < 5e-4
    assert abs(model.transformer.h[3].attn.c_proj.weight.std().item() - scaled) < 5e-4
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0
    untied = GPT(GPTConfig.from_preset("tiny", tie_weights=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


# ------------------------------------------------------------------ forward pass

def test_forward_shapes_and_loss():
    model = small_model().eval()
    idx = torch.randint(0, 97, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, 97) and loss is None
    logits, loss = model(idx, targets=idx)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 97), idx.reshape(-1)))
    assert abs(loss.item() - math.log(97)) < 0.5  # an untrained model is close to uniform
    targets = idx.clone()
    targets[:, :5] = -100  # ignored positions
    _, masked = model(idx, targets=targets)
    torch.testing.assert_close(masked, torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 97),
                                                                         idx[:, 5:].reshape(-1)))


def test_last_only_returns_the_last_position():
    model = small_model().eval()
    idx = torch.randint(0, 97, (2, 9))
    full, _ = model(idx)
    last, loss = model(idx, last_only=True)
    assert last.shape == (2, 1, 97) and loss is None
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="last_only"):
        model(idx, targets=idx, last_only=True)


def test_block_size_is_enforced():
    model = small_model()
    with pytest.raises(ValueError, match="longer than block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(33, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="30 cached \\+ 3 new"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert cache.length == 30  # a refused step leaves the cache as it was
    model(torch.zeros(1, 2, dtype=torch.long), cache=cache)    # exactly block_size tokens: allowed
    assert cache.length == 32
    with pytest.raises(AssertionError):   # the cache only asserts the invariant the model checked
        cache.update(0, torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8))


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_causal_every_config(variant):
    """Changing token t changes no output before t (and does change the output at t)."""
    model = small_model(**variant).eval()
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    base, _ = model(idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 97
        out, _ = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", [dict(pos="learned", prenorm=True), dict(pos="rope", prenorm=False,
                                                                                norm="rmsnorm")])
def test_naive_and_sdpa_give_same_outputs_and_gradients(variant):
    """Tolerance: 1e-5 absolute / 1e-4 relative (fp32; the two differ only in the order of the sums)."""
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    results = []
    for attn in ("sdpa", "naive"):
        model = small_model(seed=3, attn=attn, **variant)
        logits, loss = model(idx, targets=idx)
        loss.backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-4)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_gives_same_outputs_and_gradients(dropout):
    """Activation checkpointing recomputes the same numbers (dropout masks included: the RNG state is replayed).
    Tolerance: exact up to 1e-6."""
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    results = []
    for ckpt in (False, True):
        model = small_model(seed=4, checkpoint=ckpt, dropout=dropout).train()
        torch.manual_seed(123)
        logits, loss = model(idx, targets=idx)
        loss.backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=0)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------ KV cache

@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_kv_cache_matches_full_forward_every_step(variant):
    """Prefill 6 tokens, then one token per step: every step's logits equal the full forward's (atol 1e-5)."""
    model = small_model(**variant).eval()
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        step, _ = model(idx[:, :6], cache=cache)
        torch.testing.assert_close(step, full[:, :6], atol=1e-5, rtol=1e-4)
        for t in range(6, 24):
            step, _ = model(idx[:, t:t + 1], cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-4, msg=f"step {t}")
        assert cache.length == 24
        assert all(k.shape == (2, 4, 24, 8) for k in cache.keys)


def test_kv_cache_chunks_crop_and_reset():
    model = small_model(pos="rope").eval()
    idx = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        parts = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 12), (12, 20))]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
        cache.crop(12)  # rewind, then redo the last chunk
        again, _ = model(idx[:, 12:], cache=cache)
        torch.testing.assert_close(again, full[:, 12:], atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="batch of 1"):
            model(idx[:, :1].repeat(2, 1), cache=cache)
        cache.reset()
        first, _ = model(idx[:, :3].repeat(2, 1), cache=cache)  # an empty cache accepts a new batch size
        torch.testing.assert_close(first[1], full[0, :3], atol=1e-5, rtol=1e-4)
    assert isinstance(cache, KVCache) and cache.nbytes() == 2 * 2 * 2 * 4 * 32 * 8 * 4


def test_kv_cache_under_bf16_autocast():
    model = small_model().eval()
    idx = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = model(idx)
        cache = model.new_cache()
        model(idx[:, :9], cache=cache)
        last, _ = model(idx[:, 9:], cache=cache)
    assert cache.keys[0].dtype == torch.bfloat16
    torch.testing.assert_close(last[:, 0].float(), full[:, 9].float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padded_batch_equals_separate_rows(pos):
    """attention_mask: padding is never attended and positions count real tokens, prefill and decode."""
    model = small_model(pos=pos).eval()
    g = torch.Generator().manual_seed(8)
    a, b = torch.randint(0, 97, (1, 9), generator=g), torch.randint(0, 97, (1, 5), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    nxt = torch.randint(0, 97, (2, 1), generator=g)
    with torch.no_grad():
        cache = model.new_cache()
        prefill, _ = model(batch, cache=cache, attention_mask=mask)
        step, _ = model(nxt, cache=cache, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1))
        alone_a, _ = model(torch.cat([a, nxt[:1]], 1))
        alone_b, _ = model(torch.cat([b, nxt[1:]], 1))
    torch.testing.assert_close(prefill[0], alone_a[0, :9], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prefill[1, 4:], alone_b[0, :5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step[0, 0], alone_a[0, 9], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step[1, 0], alone_b[0, 5], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(batch, attention_mask=mask[:, :5])


# ------------------------------------------------------------------ it learns

def test_tiny_model_overfits_a_fixed_batch_of_real_text():
    """The model can learn: on one fixed batch of Shakespeare (4 x 32 GPT-2 tokens, renumbered into the batch's own
    91-token vocabulary to keep the test fast) the loss falls from ~ln(91) = 4.5 to below 0.5 within 60 steps."""
    from shared.registry import gpt2_encoding, load

    docs = load("shakespeare", verbose=False)
    text = next((d.text for d in docs if d.id == "hamlet_gut"), docs[0].text)
    tokens = torch.tensor(gpt2_encoding().encode_ordinary(text[5000:20000]))[:4 * 33]
    vocab, ids = torch.unique(tokens, return_inverse=True)
    x, y = ids.view(4, 33)[:, :-1], ids.view(4, 33)[:, 1:]
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", block_size=32, vocab_size=len(vocab)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(60):
        _, loss = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.9 * math.log(len(vocab))
    assert losses[-1] < 0.5, losses[-5:]
