"""shared.training: config validation, schedule, AdamW groups, token-weighted accumulation, MFU, the loop and its log."""
import argparse
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from shared.batches import BlockLoader
from shared.checkpoint import CheckpointError, load_checkpoint
from shared.model import GPT, GPTConfig
from shared.training import (PEAK_BF16_FLOPS, TRAIN_PRESETS, ConfigError, Parallelism, TrainConfig, WarmupCosine,
                             accumulate_gradients, flops_per_token, make_optimizer, make_scheduler, mfu,
                             micro_batches, parameter_groups, peak_flops, peak_flops_of, read_log, train)

# a learnable sequence: each token is the previous one + 3 (mod 64), plus noise in {0, 1}
TOKENS = ((3 * np.arange(20_000) + np.random.default_rng(0).integers(0, 2, size=20_000)) % 64).astype(np.uint16)
TINY = dict(model="tiny", block_size=16, vocab_size=64, batch_size=8, micro_batch_size=8, steps=6, lr=3e-3,
            warmup_steps=2, eval_every=0, device="cpu", progress=False)


# ------------------------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("bad, field", [
    (dict(steps=0), "steps"), (dict(steps=-3), "steps"), (dict(steps=2.5), "steps"), (dict(lr=0.0), "lr"),
    (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"), (dict(warmup_steps=11, steps=10), "warmup_steps"),
    (dict(model="gpt5"), "model"), (dict(batch_size=12, micro_batch_size=8), "batch_size"),
    (dict(micro_batch_size=0), "micro_batch_size"), (dict(dtype="fp8"), "dtype"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"), (dict(beta2=1.0), "beta2"), (dict(dropout=1.0), "dropout"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(block_size=0), "block_size"), (dict(eval_every=-1), "eval_every"),
    (dict(keep_checkpoints=0), "keep_checkpoints"), (dict(batch_size=True), "batch_size"),
])
def test_impossible_configs_fail_when_built_with_one_line_naming_the_field(bad, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**bad)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_batch_must_split_over_ranks_and_micro_batches():
    config = TrainConfig(batch_size=32, micro_batch_size=4)
    assert config.accumulation_steps(1) == 8 and config.accumulation_steps(2) == 4 and config.accumulation_steps(8) == 1
    with pytest.raises(ConfigError, match=r"batch_size=32 cannot be split into 3 rank\(s\) x micro_batch_size=4.*12"):
        config.validate(world_size=3)
    with pytest.raises(ConfigError, match="multiple of 64"):
        config.validate(world_size=16)


def test_invalid_config_fails_before_any_work(tmp_path):
    config = TrainConfig(**{**TINY, "batch_size": 16, "micro_batch_size": 4, "out_dir": str(tmp_path / "run")})
    from shared.parallel.runtime import DistributedContext
    with pytest.raises(ConfigError, match="multiple of 12"):
        train(config, ctx=DistributedContext(world_size=3), train_tokens=[TOKENS])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="no dataset folder"):
        train(TrainConfig(**TINY))


def test_command_line_flags_override_a_preset():
    parser = TrainConfig.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--steps", "5000", "--no-compile", "--micro-batch-size", "8", "--lr", "3e-4"])
    config = TrainConfig.from_args(args, preset="gpt2-124m-8gpu", world_size=8)
    assert (config.steps, config.compile, config.micro_batch_size, config.lr) == (5000, False, 8, 3e-4)
    assert config.batch_size == 512 and config.block_size == 1024 and config.accumulation_steps(8) == 8
    with pytest.raises(ConfigError, match="preset 'nope' is unknown"):
        TrainConfig.from_args(args, preset="nope")
    with pytest.raises(ConfigError, match="multiple of 56"):     # 512 sequences on 7 ranks x 8
        TrainConfig.from_args(args, preset="gpt2-124m-8gpu", world_size=7)
    for name, values in TRAIN_PRESETS.items():                 # every preset is a valid config
        TrainConfig(**values)
    gpt2 = TRAIN_PRESETS["gpt2-124m-8gpu"]
    assert gpt2["batch_size"] * gpt2["block_size"] == 524_288 and gpt2["lr"] == 6e-4


# ------------------------------------------------------------------------------------------- schedule and groups
def test_warmup_cosine_values():
    s = WarmupCosine(warmup_steps=10, steps=110, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(4) == pytest.approx(0.5) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)             # half way through the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)   # the floor, also after the end
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))     # decays monotonically
    assert WarmupCosine(0, 10, 0.0)(0) == 1.0


def test_scheduler_drives_the_optimizer_and_saves_its_state():
    config = TrainConfig(**{**TINY, "steps": 20, "warmup_steps": 4, "lr": 1e-2, "min_lr_ratio": 0.1})
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64, block_size=16))
    opt = make_optimizer(model, config, torch.device("cpu"))
    sched = make_scheduler(opt, config)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert seen[-1] == pytest.approx(1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert all(g["lr"] == opt.param_groups[0]["lr"] for g in opt.param_groups)
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"warmup_steps": 4, "steps": 20, "min_ratio": 0.1}


def test_decay_groups_split_matrices_from_biases_and_norms():
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64, block_size=16))
    model.transformer.h[0].ln_1.weight.requires_grad_(False)          # frozen: in no group
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight"} <= decayed
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "transformer.h.0.attn.c_attn.bias" in not_decayed and "transformer.ln_f.weight" in not_decayed
    assert "transformer.h.0.ln_1.weight" not in not_decayed
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)   # the tied head counted once


# ------------------------------------------------------------------------------------------- accumulation
def _grads(model, batches, shortcut=False):
    model.zero_grad()
    if shortcut:
        for x, y in batches:
            (model(x, y)[1] / len(batches)).backward()
    else:
        accumulate_gradients(model, batches)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_accumulation_equals_one_batch_also_for_unequal_micro_batches():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64, block_size=16))
    x, y = next(iter(BlockLoader([TOKENS], block_size=16, batch_size=8, seed=0)))
    y = y.clone()
    y[6:, :10] = -100                                       # masked targets: token counts differ per row too
    one = _grads(model, [(x, y)])
    equal = _grads(model, [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)])
    unequal = _grads(model, [(x[:3], y[:3]), (x[3:4], y[3:4]), (x[4:], y[4:])])
    shortcut = _grads(model, [(x[:3], y[:3]), (x[3:4], y[3:4]), (x[4:], y[4:])], shortcut=True)
    assert torch.allclose(equal, one, atol=1e-6, rtol=0) and torch.allclose(unequal, one, atol=1e-6, rtol=0)
    assert not torch.allclose(shortcut, one, atol=1e-4, rtol=0)     # the loss/k shortcut is wrong here
    loss, tokens = accumulate_gradients(model, [(x[:3], y[:3]), (x[3:], y[3:])])
    assert tokens == 8 * 16 - 2 * 10 and loss == pytest.approx(model(x, y)[1].item(), abs=1e-6)


def test_micro_batches_resume_at_a_position_and_cross_epochs():
    loader = BlockLoader([TOKENS], block_size=16, batch_size=100, seed=3)
    stream = micro_batches(loader)
    first = [next(stream) for _ in range(len(loader) + 3)]      # into the second epoch
    assert first[len(loader) - 1][2] == (0, len(loader)) and first[len(loader)][2] == (1, 1)
    assert first[len(loader) - 1][0].shape[0] < 100               # the epoch's last, smaller batch
    later = micro_batches(loader, first[len(loader) - 2][2])
    for expected in first[len(loader) - 1:]:
        x, y, pos = next(later)
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1]) and pos == expected[2]
    reference = list(iter(loader))                                 # the loader's own order in epoch 0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, reference))


# ------------------------------------------------------------------------------------------- MFU
def test_flops_and_mfu():
    gpt2 = GPTConfig.from_preset("gpt2")
    N = 124_439_808 - 1024 * 768                                   # GPT-2 124M without the position table
    assert flops_per_token(gpt2) == 6 * N + 12 * 12 * 12 * 64 * 1024
    assert mfu(400_000, gpt2, 989e12) == pytest.approx(400_000 * flops_per_token(gpt2) / 989e12)
    assert mfu(800_000, gpt2, 989e12, world_size=2) == pytest.approx(mfu(400_000, gpt2, 989e12))
    assert mfu(1000, gpt2, None) is None and peak_flops(torch.device("cpu")) is None
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops_of("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops_of("NVIDIA A10") == 125e12
    assert peak_flops_of("NVIDIA H200") == PEAK_BF16_FLOPS["H200"] and peak_flops_of("Tesla T4") is None


# ------------------------------------------------------------------------------------------- the loop
def test_train_equals_the_bare_loop_bit_for_bit():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64, block_size=16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    bare = []
    for _, (x, y) in zip(range(6), BlockLoader([TOKENS], block_size=16, batch_size=8, seed=0)):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bare.append(loss.item())
    plain = TrainConfig(**{**TINY, "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.0, "beta2": 0.999,
                           "grad_clip": 0.0})
    run = train(plain, train_tokens=[TOKENS])
    assert [r["loss"] for r in run.history] == bare
    assert all(torch.equal(a, b) for a, b in zip(run.model.parameters(), model.parameters()))


def test_train_logs_every_step_and_eval_and_the_loss_falls(tmp_path):
    config = TrainConfig(**{**TINY, "steps": 30, "batch_size": 16, "micro_batch_size": 4, "eval_every": 10,
                            "eval_batches": 2, "out_dir": str(tmp_path)})
    run = train(config, train_tokens=[TOKENS[:15_000]], val_tokens=[TOKENS[15_000:]])
    log = read_log(tmp_path / "log.jsonl")
    assert log == run.history
    steps = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in steps] == list(range(1, 31)) and [r["step"] for r in evals] == [0, 10, 20, 30]
    assert all(r["tokens"] == r["step"] * 16 * 16 and r["mfu"] is None and r["tokens_per_s"] > 0 for r in steps)
    assert all(math.isclose(r["val_ppl"], math.exp(r["val_loss"])) for r in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert evals[0]["val_loss"] == pytest.approx(math.log(64), abs=0.1)
    assert steps[0]["lr"] == pytest.approx(1.5e-3) and steps[0]["grad_norm"] > 0


def test_gradient_clipping_bounds_the_update_and_reports_the_norm_before():
    config = TrainConfig(**{**TINY, "steps": 1, "warmup_steps": 0, "grad_clip": 1e-3, "lr": 1.0, "beta1": 0.0,
                            "beta2": 0.0, "weight_decay": 0.0})
    run = train(config, train_tokens=[TOKENS])
    assert run.history[0]["grad_norm"] > 1e-3                           # the norm before clipping
    unclipped = train(dataclasses.replace(config, grad_clip=0.0), train_tokens=[TOKENS])
    assert unclipped.history[0]["grad_norm"] == pytest.approx(run.history[0]["grad_norm"])


def test_bf16_autocast_on_request_runs_on_cpu():
    run = train(TrainConfig(**{**TINY, "steps": 2, "dtype": "bf16"}), train_tokens=[TOKENS])
    assert all(math.isfinite(r["loss"]) for r in run.history)
    assert next(run.model.parameters()).dtype == torch.float32          # fp32 master weights


def test_resume_without_a_checkpoint_starts_fresh_and_the_log_holds_one_run(tmp_path):
    # a run killed before its first checkpoint left a log; --resume finds no latest.json and starts again
    (tmp_path / "log.jsonl").write_text('{"kind": "eval", "step": 0, "val_loss": 1.0, "val_ppl": 2.7}\n{"kind": "tr',
                                        encoding="utf-8")
    config = TrainConfig(**{**TINY, "steps": 2, "warmup_steps": 1, "eval_every": 1, "eval_batches": 1,
                            "out_dir": str(tmp_path)})
    run = train(config, train_tokens=[TOKENS], val_tokens=[TOKENS[:2000]], resume=True)
    assert [(r["kind"], r["step"]) for r in read_log(tmp_path / "log.jsonl")] == \
           [("eval", 0), ("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert read_log(tmp_path / "log.jsonl") == run.history


# ------------------------------------------------------------------------------------------- strategy hooks
class _NewParameters(Parallelism):
    """A one-process stand-in for tensor parallelism: parallelize() replaces modules, so the model's parameters
    are new objects that an optimizer made beforehand would never update."""

    def parallelize(self, model):
        for block in model.transformer.h:
            block.mlp.c_fc = copy.deepcopy(block.mlp.c_fc)
        return model


def test_a_strategy_transforms_the_model_before_the_optimizer_is_made(tmp_path):
    config = TrainConfig(**{**TINY, "out_dir": str(tmp_path / "run")})
    run = train(config, train_tokens=[TOKENS], parallelism=_NewParameters(name="new-parameters"))
    plain = train(dataclasses.replace(config, out_dir=None), train_tokens=[TOKENS])
    assert [r["loss"] for r in run.history] == [r["loss"] for r in plain.history]        # c_fc trained too
    assert all(torch.equal(a, b) for a, b in zip(run.model.parameters(), plain.model.parameters()))
    assert load_checkpoint(tmp_path / "run")["parallel"] == {"strategy": "new-parameters", "data_world": 1,
                                                             "checkpoint": "full"}
    with pytest.raises(ValueError, match="either wrap or parallelism"):
        train(config, train_tokens=[TOKENS], wrap=lambda m: m, parallelism=Parallelism())


def test_resuming_with_another_checkpoint_layout_is_refused_in_one_line(tmp_path):
    config = TrainConfig(**{**TINY, "steps": 2, "warmup_steps": 1, "out_dir": str(tmp_path)})
    train(config, train_tokens=[TOKENS])

    class Sharded(Parallelism):
        checkpoint_kind = "dcp"

    with pytest.raises(CheckpointError, match=r"saved by --strategy single \(1 data-parallel rank\(s\)\), this run "
                                              r"is sharded \(1\); resume with --strategy single$"):
        train(config, train_tokens=[TOKENS], resume=True,
              parallelism=Sharded(name="sharded"))
