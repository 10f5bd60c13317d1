"""Data parallelism (shared.parallel.data) against single-process training, on real processes: this file is also
the torchrun worker (`python -m torch.distributed.run ... tests/test_data_parallel.py --out OUT.json`, the `ranks`
fixture of tests/conftest.py). Each launch (2
and 4 gloo ranks) trains with NaiveDataParallel, BucketedDataParallel and torch's DistributedDataParallel through
ch04_distributed/ddp_demo.py's step (every rank also trains the unwrapped model on the whole global batch) and
rank 0 writes the measured differences and the counted all-reduces; the tests below assert on them.

Tolerances (fp32): gradients 1e-6 (the ranks' means add the same products in another order: ~3e-8 measured);
weights after AdamW steps 1e-4 (Adam divides by sqrt(v), which magnifies rounding in tiny gradients: ~1.5e-5
measured); Adam's moments 1e-6."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from shared.model import GPT, GPTConfig
from shared.parallel.data import BucketedDataParallel, NaiveDataParallel, assign_buckets, bucket_layout
from shared.parallel.runtime import distributed, run_torchrun

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "ch04_distributed" / "ddp_demo.py"
GRAD_TOL, WEIGHT_TOL, ADAM_TOL = 1e-6, 1e-4, 1e-6
IMPLS = ("naive", "bucketed", "torch")
SMALL_CAP_MB = 0.02            # several buckets for the tiny model (28,032 parameters = 112,128 bytes)
STEPS, BATCH = 4, 8


def load_demo():
    spec = importlib.util.spec_from_file_location("ddp_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp() -> nn.Module:
    """Parameters of 800, 80, 400 and 20 bytes, registered in that order."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


# ---------------------------------------------------------------- the worker (runs under torchrun)

def worker(out_path: str) -> None:
    demo = load_demo()
    with distributed("cpu", timeout_s=60) as ctx:                # shutdown: gc.collect(), then destroy the group
        def run(*flags):
            return demo.run(demo.parse_args([*flags, "--steps", str(STEPS), "--batch", str(BATCH),
                                             "--bucket-cap-mb", str(SMALL_CAP_MB)]), ctx)
        results = {}
        for impl in IMPLS:
            results[impl] = run("--impl", impl)
            results[f"{impl}/accum"] = run("--impl", impl, "--accum", "2")
            results[f"{impl}/sync_every"] = run("--impl", impl, "--accum", "2", "--sync-every-micro-batch")
        results["trace"] = run("--impl", "bucketed", "--trace", "--no-reference")
        cap = 500 / 2**20                        # 500 bytes
        results["mlp_layout"] = bucket_layout(BucketedDataParallel(mlp(), ctx.group, bucket_cap_mb=cap))
        results["mlp_naive_hooks"] = len(NaiveDataParallel(mlp(), ctx.group)._hooks)
        if ctx.is_main:
            Path(out_path).write_text(json.dumps(results), encoding="utf-8")


def n_params() -> int:
    return sum(p.numel() for p in GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4,
                                               n_embd=32)).parameters())


def expected_calls(impl: str, step: int = 1) -> int:
    """Gradient all-reduces in one round: one per parameter (naive), one per bucket (ours). torch's DDP starts with
    a first bucket of 1 MiB (the whole 112 KB model) and after the first backward pass rebuilds its buckets with the cap,
    in the order the gradients arrived, which is ours."""
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
    params = list(GPT(config).parameters())
    if impl == "naive":
        return len(params)
    if impl == "torch" and step == 0:
        return 1
    return len(assign_buckets([p.numel() * 4 for p in params][::-1], int(SMALL_CAP_MB * 2**20)))


def expected_round(impl: str) -> list[int]:
    return [expected_calls(impl, step) for step in range(STEPS)]


# ---------------------------------------------------------------- tests on real ranks

@pytest.mark.parametrize("impl", IMPLS)
def test_training_equals_single_process_on_the_global_batch(ranks, impl):
    p, results = ranks
    r = results[impl]
    assert r["world_size"] == p and r["steps"] == STEPS
    assert r["started_equal"], "the start-up broadcast did not give every rank rank 0's weights"
    assert r["grad_diff"] <= GRAD_TOL, r["grad_diff"]
    assert r["param_diff"] <= WEIGHT_TOL, r["param_diff"]
    assert r["adam_state_diff"] <= ADAM_TOL, r["adam_state_diff"]
    assert r["replicas_identical"]


@pytest.mark.parametrize("impl", IMPLS)
def test_our_wrappers_equal_torch_ddp(ranks, impl):
    _, results = ranks
    # same data, same order of additions (two or four exact halvings/quarterings, then a sum): the same losses
    assert results[impl]["losses"] == results["torch"]["losses"]


@pytest.mark.parametrize("impl", IMPLS)
def test_accumulation_equals_one_large_batch_with_one_round_of_all_reduce(ranks, impl):
    _, results = ranks
    r = results[f"{impl}/accum"]
    assert r["accum"] == 2 and r["no_sync"]
    assert r["grad_diff"] <= GRAD_TOL and r["param_diff"] <= WEIGHT_TOL and r["adam_state_diff"] <= ADAM_TOL, r
    # counted, per optimizer step: one round of gradient all-reduces, 4 bytes per parameter, whatever k is
    assert r["calls"] == expected_round(impl)
    assert r["bytes"] == [4 * n_params()] * STEPS == [r["params"] * 4] * STEPS
    assert expected_round("bucketed") == [4] * STEPS and expected_round("naive") == [28] * STEPS


@pytest.mark.parametrize("impl", IMPLS)
def test_without_no_sync_every_micro_batch_communicates(ranks, impl):
    _, results = ranks
    r = results[f"{impl}/sync_every"]
    assert not r["no_sync"]
    n = expected_calls(impl)                     # per backward pass; torch's very first backward: 1 bucket
    first = expected_calls(impl, step=0) + n
    assert r["calls"] == [first] + [2 * n] * (STEPS - 1)
    assert r["bytes"] == [2 * 4 * n_params()] * STEPS
    assert r["grad_diff"] <= GRAD_TOL            # the same result: the mean of sums = the sum of means


def test_buckets_launch_during_the_backward_pass(ranks):
    _, results = ranks
    trace = results["trace"]
    events = {(e["bucket"], e["event"]): e["time"] for e in trace["timeline"]}
    n = len(trace["buckets"])
    assert n == expected_calls("bucketed") == 4
    # bucket 0 (the last layers) starts its all-reduce before the gradients of the last bucket (the embeddings)
    # even begin to arrive: communication overlaps the rest of the backward pass
    assert events[(0, "launched")] < events[(n - 1, "first_grad")]
    assert all(events[(b, "launched")] <= events[(None, "backward_done")] for b in range(n))
    assert [e["bucket"] for e in trace["timeline"] if e["event"] == "launched"] == list(range(n))


def test_bucket_boundaries_for_a_given_cap(ranks):
    _, results = ranks
    # reverse registration order: 2.bias (20 B) + 2.weight (400 B) = 420 B < 500 B, + 0.bias (80 B) reaches the
    # cap and closes the bucket; 0.weight (800 B, larger than the cap) is left for a bucket of its own
    assert results["mlp_layout"] == [["2.bias", "2.weight", "0.bias"], ["0.weight"]]
    assert results["mlp_naive_hooks"] == 4


def test_gpt_buckets_hold_every_parameter_once_in_reverse_order(ranks):
    _, results = ranks
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
    names = [n for n, _ in GPT(config).named_parameters()]       # the tied head is listed once, as wte
    layout = results["bucketed"]["buckets"]
    assert [n for bucket in layout for n in bucket] == names[::-1]


# ---------------------------------------------------------------- one process

def test_assign_buckets_by_hand():
    assert assign_buckets([20, 400, 80, 800], 500) == [[0, 1, 2], [3]]
    assert assign_buckets([100] * 5, 250) == [[0, 1, 2], [3, 4]]
    assert assign_buckets([100] * 5, 10**9) == [[0, 1, 2, 3, 4]]
    assert assign_buckets([600, 10], 500) == [[0], [1]]
    assert assign_buckets([], 500) == []
    with pytest.raises(ValueError, match="positive"):
        assign_buckets([1], 0)


def test_assign_buckets_follows_torch_ddp_rule():
    import torch.distributed as dist
    rng = torch.Generator().manual_seed(0)
    for cap in (64, 500, 4096):
        numels = torch.randint(1, 400, (30,), generator=rng).tolist()
        theirs, _ = dist._compute_bucket_assignment_by_size([torch.zeros(n) for n in numels], [cap])
        assert assign_buckets([4 * n for n in numels], cap) == theirs


def test_a_missing_group_is_a_clear_error():
    for wrapper in (NaiveDataParallel, BucketedDataParallel):
        with pytest.raises(ValueError, match="process group explicitly"):
            wrapper(mlp(), None)


def test_demo_refuses_a_batch_that_does_not_split():
    proc = run_torchrun(DEMO, "--impl", "naive", "--batch", "6", "--accum", "2", nproc=2, timeout=240, cwd=ROOT)
    assert proc.returncode != 0
    assert "must be a multiple of ranks x --accum = 2 x 2" in proc.stdout


if __name__ == "__main__":
    worker(sys.argv[sys.argv.index("--out") + 1])
