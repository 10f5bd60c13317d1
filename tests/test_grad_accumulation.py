"""Gradient accumulation (chapter 4, notebook 02): k micro-batches equal one large batch, in one process for our
GPT, and on real gloo ranks with no_sync (one round of all-reduce per optimizer step, counted).

Tolerance (fp32): gradients 1e-6 (one matmul over the batch and k smaller ones add the same products in another
order: ~3e-8 measured); weights after AdamW steps 1e-4 (Adam magnifies rounding in tiny gradients)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.memory import SavedTensorBytes
from shared.model import GPT, GPTConfig
from shared.parallel.runtime import run_torchrun_json

ROOT = Path(__file__).resolve().parent.parent
GRAD_TOL, WEIGHT_TOL = 1e-6, 1e-4
CONFIG = GPTConfig(vocab_size=128, block_size=16, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    data = torch.randint(CONFIG.vocab_size, (8, 17), generator=torch.Generator().manual_seed(1))
    return model, data[:, :-1], data[:, 1:]


def grads_of(model, micro_batches, weights):
    model.zero_grad(set_to_none=True)
    for (x, y), w in zip(micro_batches, weights):
        _, loss = model(x, y)
        (loss * w).backward()
    return [p.grad.clone() for p in model.parameters()]


def max_diff(a, b) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_equal_micro_batches_equal_one_large_batch(setup, k):
    model, X, Y = setup
    full = grads_of(model, [(X, Y)], [1.0])
    accumulated = grads_of(model, list(zip(X.chunk(k), Y.chunk(k))), [1 / k] * k)
    assert max_diff(accumulated, full) <= GRAD_TOL
    # the test can fail: forgetting the 1/k gives k times the gradient
    if k > 1:
        summed = grads_of(model, list(zip(X.chunk(k), Y.chunk(k))), [1.0] * k)
        assert max_diff(summed, [g * k for g in full]) <= k * GRAD_TOL
        assert max_diff(summed, full) > 1e-3


def test_unequal_micro_batches_need_token_weights_not_the_mean_of_means(setup):
    model, X, Y = setup
    Y = Y.clone()
    Y[:6, :8] = -100                                   # masked "prompt" targets: 6*8 + 2*16 = 80 target tokens
    micro = list(zip(X.split([6, 2]), Y.split([6, 2])))
    counts = [int((y != -100).sum()) for _, y in micro]
    assert counts == [48, 32]
    full = grads_of(model, [(X, Y)], [1.0])
    weighted = grads_of(model, micro, [n / sum(counts) for n in counts])
    mean_of_means = grads_of(model, micro, [0.5, 0.5])
    assert max_diff(weighted, full) <= GRAD_TOL
    assert max_diff(mean_of_means, full) > 1e-3        # the bug is visible, far above rounding


def test_activation_memory_is_proportional_to_the_micro_batch(setup):
    model, X, Y = setup
    saved = {}
    for b in (1, 2, 4, 8):
        with SavedTensorBytes(model) as counter:
            _, loss = model(X[:b], Y[:b])
        del loss
        saved[b] = counter.bytes
    per_sequence = saved[8] / 8
    for b, n in saved.items():          # linear in b, up to a few small per-call tensors (positions, ...)
        assert abs(n / b - per_sequence) <= 0.02 * per_sequence, saved
    assert saved[8] - saved[4] == 2 * (saved[4] - saved[2])


def test_no_sync_gives_one_all_reduce_per_step_on_real_ranks():
    # torch's DDP here (tests/test_data_parallel.py does every wrapper with k=2)
    demo, common = ROOT / "ch04_distributed" / "ddp_demo.py", ("--impl", "torch", "--accum", "4", "--steps", "3")
    quiet = run_torchrun_json(demo, *common, nproc=2, timeout=180)
    chatty = run_torchrun_json(demo, *common, "--sync-every-micro-batch", nproc=2, timeout=180)
    n_bytes = 4 * quiet["params"]
    # the whole tiny model fits one bucket of the default 25 MiB cap, so one round = one call
    assert quiet["calls"] == [1, 1, 1] and quiet["bytes"] == [n_bytes] * 3
    assert chatty["calls"] == [4, 4, 4] and chatty["bytes"] == [4 * n_bytes] * 3
    for r in (quiet, chatty):
        assert r["grad_diff"] <= GRAD_TOL and r["param_diff"] <= WEIGHT_TOL and r["replicas_identical"], r
