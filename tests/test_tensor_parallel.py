"""Tensor parallelism (shared.parallel.tensor, shared.parallel.comm) against the unsharded modules, on real
processes (and, on 4 ranks, a 2 x 2 data x tensor parallel mesh): this file is also the torchrun worker (`python -m torch.distributed.run ... tests/test_tensor_parallel.py
--out OUT.json`, the `ranks` fixture of tests/conftest.py). Each launch (2 and 4 ranks, gloo) runs every check once and rank 0 writes the measured differences and
counts; the tests below assert on them. Tolerances (fp32): 1e-5 for one forward/backward, 1e-4 for the weights after
a few AdamW steps (Adam divides by sqrt(v) and so magnifies rounding differences in tiny gradients)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from shared.block import Block
from shared.model import GPT, GPTConfig
from shared.parallel import tensor as tp
from shared.parallel.comm import CollectiveCounter, ring_all_reduce_traffic
from shared.parallel.runtime import distributed, run_torchrun

ROOT = Path(__file__).resolve().parent.parent
FORWARD_TOL, TRAIN_TOL = 1e-5, 1e-4
CONFIG = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
B, T = 2, 8


# ---------------------------------------------------------------- the worker (runs under torchrun)

def _max_diff(a, b) -> float:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
        return max(_max_diff(a[k], b[k]) for k in a)
    return (a.detach().float() - b.detach().float()).abs().max().item()


def _check_linears(group, rank, p) -> dict:
    out = {}
    for chunks in (1, 3):
        torch.manual_seed(0)
        ref = nn.Linear(16, 24, bias=True)
        col = tp.parallel_from_linear(ref, "column", group, chunks=chunks)
        x = torch.randn(B, T, 16, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        y_ref = ref(x_ref)
        y = col(x)
        w = torch.randn_like(y_ref)                       # a fixed upstream gradient, the same on every rank
        (y_ref * w).sum().backward()
        (y * tp.shard(w, 2, rank, p, chunks)).sum().backward()
        out[f"column{chunks}"] = {
            "forward": _max_diff(y, tp.shard(y_ref, 2, rank, p, chunks)),
            "weight": _max_diff(col.weight.grad, tp.shard(ref.weight.grad, 0, rank, p, chunks)),
            "bias": _max_diff(col.bias.grad, tp.shard(ref.bias.grad, 0, rank, p, chunks)),
            "input": _max_diff(x.grad, x_ref.grad)}      # f's all-reduce: the full input gradient on every rank
    torch.manual_seed(1)
    ref = nn.Linear(24, 16, bias=True)
    row = tp.parallel_from_linear(ref, "row", group)
    x_full = torch.randn(B, T, 24)
    x_ref = x_full.clone().requires_grad_(True)
    x_local = tp.shard(x_full, 2, rank, p).requires_grad_(True)
    y_ref, y = ref(x_ref), row(x_local)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y * w).sum().backward()
    out["row"] = {"forward": _max_diff(y, y_ref),
                  "weight": _max_diff(row.weight.grad, tp.shard(ref.weight.grad, 1, rank, p)),
                  "bias": _max_diff(row.bias.grad, ref.bias.grad),
                  "input": _max_diff(x_local.grad, tp.shard(x_ref.grad, 2, rank, p))}
    # built directly (init=True): the slices of the layer torch would build with the same seed, whatever p is
    torch.manual_seed(5)
    full = nn.Linear(16, 24)
    torch.manual_seed(5)
    col = tp.ColumnParallelLinear(16, 24, group, chunks=3)
    torch.manual_seed(5)
    row = tp.RowParallelLinear(16, 24, group)
    out["init"] = {"column": max(_max_diff(col.weight, tp.shard(full.weight, 0, rank, p, 3)),
                                 _max_diff(col.bias, tp.shard(full.bias, 0, rank, p, 3))),
                   "row": max(_max_diff(row.weight, tp.shard(full.weight, 1, rank, p)),
                              _max_diff(row.bias, full.bias))}
    return out


def _check_block(group, rank, p) -> dict:
    config = GPTConfig(**CONFIG)
    torch.manual_seed(0)
    model = GPT(config)
    ref = model.transformer.h[0]
    block = tp.apply_tensor_parallel(copy.deepcopy(model), group).transformer.h[0]
    x = torch.randn(B, T, config.n_embd)
    x_ref, x_tp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn(B, T, config.n_embd)
    (ref(x_ref) * w).sum().backward()
    with CollectiveCounter() as fwd:
        y = block(x_tp)
    with CollectiveCounter() as bwd:
        (y * w).sum().backward()
    names = [n for n, _ in ref.named_parameters()]
    wrapped = nn.Module()
    wrapped.block = block                                  # gather_full_gradients works on any module tree
    grads = {n[len("block."):]: g for n, g in tp.gather_full_gradients(wrapped).items()}
    return {"forward": _max_diff(y, ref(x)), "input": _max_diff(x_tp.grad, x_ref.grad),
            "grads": _max_diff(grads, {n: q.grad for n, q in ref.named_parameters()}), "grad_names": names,
            "forward_calls": dict(fwd.calls), "backward_calls": dict(bwd.calls),
            "forward_bytes": sum(fwd.bytes.values()), "backward_bytes": sum(bwd.bytes.values())}


def _train(model, steps, x, y, clip) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        clip(model)
        opt.step()
        losses.append(loss.item())
    return losses


def _check_gpt(group, rank, p) -> dict:
    config = GPTConfig(**CONFIG)
    torch.manual_seed(0)
    ref = GPT(config)
    model = tp.apply_tensor_parallel(copy.deepcopy(ref), group)
    data = torch.randint(config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(3))
    x, y = data[:, :-1], data[:, 1:]
    _, ref_loss = ref(x, y)
    ref_loss.backward()
    with CollectiveCounter() as comm:
        _, loss = model(x, y)
        loss.backward()
    out = {"loss": abs(loss.item() - ref_loss.item()),
           "grads": _max_diff(tp.gather_full_gradients(model), {n: q.grad for n, q in ref.named_parameters()}),
           "step_calls": dict(comm.calls), "step_bytes": sum(comm.bytes.values()),
           "local_params": sum(q.numel() for q in model.parameters())}
    # loading another model's unsharded weights, then gathering them back
    torch.manual_seed(7)
    other = GPT(config)
    tp.load_full_state_dict(model, other.state_dict())
    out["gathered_equal"] = all(torch.equal(a, b) for a, b in
                                zip(tp.gather_full_state_dict(model).values(), other.state_dict().values()))
    out["gathered_keys_equal"] = list(tp.gather_full_state_dict(model)) == list(other.state_dict())
    with torch.no_grad():
        out["loaded_forward"] = _max_diff(model(x)[0], other(x)[0])
    try:
        tp.load_full_state_dict(model, {k: v for k, v in other.state_dict().items() if "c_fc.bias" not in k})
        out["missing_key_error"] = ""
    except KeyError as e:
        out["missing_key_error"] = str(e)
    # training: clipping by the whole model's norm, with a max_norm small enough to clip every step
    torch.manual_seed(0)
    ref = GPT(config)
    model = tp.apply_tensor_parallel(copy.deepcopy(ref), group)
    ref_norms, tp_norms = [], []
    ref_losses = _train(ref, 4, x, y, lambda m: ref_norms.append(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1).item()))
    tp_losses = _train(model, 4, x, y, lambda m: tp_norms.append(tp.clip_grad_norm_(m, 0.1, group).item()))
    out.update(train_weights=_max_diff(tp.gather_full_state_dict(model), ref.state_dict()),
               train_losses=max(abs(a - b) for a, b in zip(ref_losses, tp_losses)),
               loss_fell=tp_losses[-1] < tp_losses[0] - 0.1,
               norms=max(abs(a - b) for a, b in zip(ref_norms, tp_norms)), min_norm=min(ref_norms))
    return out


def _check_dtensor(rank, p) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    config = GPTConfig(**CONFIG)
    data = torch.randint(config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(3))
    x, y = data[:, :-1], data[:, 1:]
    out = {}
    for sp in (False, True):
        torch.manual_seed(0)
        ref = GPT(config)
        model = tp.apply_dtensor_parallel(copy.deepcopy(ref), init_device_mesh("cpu", (p,)), sequence_parallel=sp)
        _, ref_loss = ref(x, y)
        ref_loss.backward()
        _, loss = model(x, y)
        loss.backward()
        grads = tp.gather_dtensor_state_dict(model, p, grads=True)
        result = {"loss": abs(loss.item() - ref_loss.item()),
                  "grads": _max_diff(grads, {n: q.grad for n, q in ref.named_parameters()}),
                  "weights": _max_diff(tp.gather_dtensor_state_dict(model, p), ref.state_dict())}
        torch.manual_seed(0)
        ref = GPT(config)
        model = tp.apply_dtensor_parallel(copy.deepcopy(ref), init_device_mesh("cpu", (p,)), sequence_parallel=sp)
        _train(ref, 3, x, y, lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1))
        _train(model, 3, x, y, lambda m: tp.clip_grad_norm_dtensor_(m, 0.1))
        result["train_weights"] = _max_diff(tp.gather_dtensor_state_dict(model, p), ref.state_dict())
        out["sequence_parallel" if sp else "plain"] = result
    return out


def _check_dp_x_tp(rank) -> dict:
    """4 ranks as a 2 x 2 mesh: tensor parallelism inside each pair of the "tp" dimension, torch DDP across "dp";
    each data-parallel replica trains on half the batch. Equal to one process on the whole batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    tp_group, dp_group = mesh["tp"].get_group(), mesh["dp"].get_group()
    config = GPTConfig(**CONFIG)
    data = torch.randint(config.vocab_size, (2 * B, T + 1), generator=torch.Generator().manual_seed(4))
    x, y = data[:, :-1], data[:, 1:]
    torch.manual_seed(0)
    ref = GPT(config)
    model = DistributedDataParallel(tp.apply_tensor_parallel(copy.deepcopy(ref), tp_group), process_group=dp_group)
    dp_rank = mesh.get_coordinate()[0]
    mine = slice(dp_rank * B, (dp_rank + 1) * B)
    _train(ref, 3, x, y, lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x[mine], y[mine])
        loss.backward()                                    # DDP averages over "dp"; f/g sum over "tp"
        tp.clip_grad_norm_(model.module, 0.1, tp_group)
        opt.step()
    return {"tp_group": dist_ranks(tp_group), "dp_group": dist_ranks(dp_group),
            "weights": _max_diff(tp.gather_full_state_dict(model.module), ref.state_dict())}


def dist_ranks(group) -> list[int]:
    import torch.distributed as dist
    return dist.get_process_group_ranks(group)


def worker(out_path: str) -> None:
    warnings.filterwarnings("ignore", message="Full backward hook")
    torch.set_num_threads(1)
    with distributed("cpu", timeout_s=60) as ctx:            # shutdown: gc.collect(), then destroy the group
        group, rank, p = ctx.group, ctx.rank, ctx.world_size
        results = {"linears": _check_linears(group, rank, p), "block": _check_block(group, rank, p),
                   "gpt": _check_gpt(group, rank, p), "dtensor": _check_dtensor(rank, p)}
        if p == 4:
            results["dp_x_tp"] = _check_dp_x_tp(rank)
        if rank == 0:
            Path(out_path).write_text(json.dumps(results), encoding="utf-8")


# ---------------------------------------------------------------- tests on real ranks

@pytest.mark.parametrize("layer", ["column1", "column3", "row"])
def test_parallel_linears_equal_the_full_layer(ranks, layer):
    _, results = ranks
    for what, diff in results["linears"][layer].items():
        assert diff <= FORWARD_TOL, (layer, what, diff)


def test_parallel_linears_are_slices_of_torchs_init(ranks):
    _, results = ranks
    assert results["linears"]["init"] == {"column": 0.0, "row": 0.0}


def test_block_equals_the_unsharded_block(ranks):
    _, r = ranks
    block = r["block"]
    assert block["forward"] <= FORWARD_TOL and block["input"] <= FORWARD_TOL and block["grads"] <= FORWARD_TOL, block
    assert len(block["grad_names"]) == 12           # ln_1, c_attn, c_proj, ln_2, c_fc, c_proj: weights and biases


def test_block_does_two_all_reduces_forward_and_two_backward(ranks):
    _, r = ranks
    block, C = r["block"], CONFIG["n_embd"]
    assert block["forward_calls"] == {"all_reduce": 2}
    assert block["backward_calls"] == {"all_reduce": 2}
    assert block["forward_bytes"] == block["backward_bytes"] == 2 * B * T * C * 4


def test_gpt_gradients_and_bytes_per_step(ranks):
    p, r = ranks
    gpt, config = r["gpt"], GPTConfig(**CONFIG)
    assert gpt["loss"] <= FORWARD_TOL and gpt["grads"] <= FORWARD_TOL, gpt
    formula = tp.tensor_parallel_bytes_per_step(config, B, T)
    assert gpt["step_calls"] == {"all_reduce": formula["calls_forward"] + formula["calls_backward"]} == {"all_reduce": 8}
    assert gpt["step_bytes"] == formula["bytes_step"] == 4 * 2 * B * T * 32 * 4
    # each rank holds 1/p of the split matrices and column biases (12C^2 + 7C per layer) and all of the rest
    C, L = config.n_embd, config.n_layer
    total = sum(q.numel() for q in GPT(config).parameters())
    assert gpt["local_params"] == total - L * (12 * C * C + 7 * C) * (p - 1) // p


def test_load_and_gather_unsharded_weights(ranks):
    _, r = ranks
    gpt = r["gpt"]
    assert gpt["gathered_equal"] and gpt["gathered_keys_equal"]
    assert gpt["loaded_forward"] <= FORWARD_TOL
    assert "c_fc.bias" in gpt["missing_key_error"]


def test_training_steps_equal_single_process(ranks):
    _, r = ranks
    gpt = r["gpt"]
    assert gpt["min_norm"] > 0.1, "max_norm must be below the gradient norm, or clipping is not tested"
    assert gpt["norms"] <= FORWARD_TOL and gpt["train_losses"] <= TRAIN_TOL and gpt["train_weights"] <= TRAIN_TOL, gpt
    assert gpt["loss_fell"]


@pytest.mark.parametrize("variant", ["plain", "sequence_parallel"])
def test_dtensor_version_matches(ranks, variant):
    _, r = ranks
    d = r["dtensor"][variant]
    assert d["loss"] <= FORWARD_TOL and d["grads"] <= FORWARD_TOL and d["weights"] == 0.0, d
    assert d["train_weights"] <= TRAIN_TOL, d


def test_dp_x_tp_mesh_trains_like_one_process(ranks):
    p, r = ranks
    if p != 4:
        pytest.skip("a 2 x 2 mesh needs 4 ranks")
    d = r["dp_x_tp"]
    assert d["tp_group"] == [0, 1] and d["dp_group"] == [0, 2]          # rank 0's groups: tp innermost
    assert d["weights"] <= TRAIN_TOL, d


# ---------------------------------------------------------------- one process

def test_shard_unshard_roundtrip_and_qkv_order():
    full = torch.arange(24).view(12, 2)
    for p in (1, 2, 4):
        for chunks in (1, 3):
            pieces = [tp.shard(full, 0, r, p, chunks) for r in range(p)]
            assert torch.equal(tp.unshard(pieces, 0, chunks), full)
    q, k, v = full.chunk(3)
    assert torch.equal(tp.shard(full, 0, 1, 2, chunks=3), torch.cat([q[2:], k[2:], v[2:]]))
    assert torch.equal(tp.interleave_qkv(full, 2).chunk(2)[1], tp.shard(full, 0, 1, 2, chunks=3))
    assert torch.equal(tp.deinterleave_qkv(tp.interleave_qkv(full, 4), 4), full)
    with pytest.raises(ValueError, match="cannot split"):
        tp.shard(full, 0, 0, 5)


def test_impossible_degree_fails_with_a_clear_message():
    config = GPTConfig(**CONFIG)
    with pytest.raises(ValueError, match="n_head divisible by 3"):
        tp.check_tensor_parallel_degree(config, 3)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            tp.check_tensor_parallel_degree(config, bad)
    with pytest.raises(ValueError, match="explicitly"):
        tp.copy_to_tensor_parallel(torch.ones(2), None)


def test_byte_formula_by_hand():
    gpt2 = GPTConfig.from_preset("gpt2")
    f = tp.tensor_parallel_bytes_per_step(gpt2, batch=8, seq_len=1024, bytes_per_value=2)
    assert f["calls_forward"] == f["calls_backward"] == 24
    assert f["bytes_per_call"] == 8 * 1024 * 768 * 2 == 12_582_912
    assert f["bytes_step"] == 48 * 12_582_912
    assert ring_all_reduce_traffic(100, 4) == 150.0 and ring_all_reduce_traffic(100, 1) == 0.0


def test_demo_script_refuses_a_degree_that_does_not_divide_the_heads():
    proc = run_torchrun(ROOT / "ch04_distributed" / "tp_demo.py", "--steps", "1", nproc=3, timeout=240, cwd=ROOT)
    assert proc.returncode != 0
    assert "n_head divisible by 3" in proc.stdout



def test_demo_script_started_without_torchrun_says_how_to_run_it():
    proc = subprocess.run([sys.executable, str(ROOT / "ch04_distributed" / "tp_demo.py")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "RANK"})
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("run me under torchrun: python -m torch.distributed.run --nproc-per-node 2 "
                                   "ch04_distributed/tp_demo.py")


if __name__ == "__main__":
    worker(sys.argv[sys.argv.index("--out") + 1])
