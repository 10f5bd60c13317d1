"""shared.checkpoint: atomic save, resume bit-for-bit after a real SIGKILL (also in the middle of a save), and one
clear line for every kind of broken, foreign or mismatched file."""
import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoint import (POINTER, CheckpointError, check_compatible, latest_checkpoint, load_checkpoint,
                               load_model, save_checkpoint)
from shared.files import is_temporary
from shared.model import GPT, GPTConfig
from shared.training import ConfigError, TrainConfig, model_config, read_log, train

ROOT = Path(__file__).resolve().parent.parent
SETUP = """
import numpy as np
from shared.training import TrainConfig
TOKENS = ((3 * np.arange(20_000) + np.random.default_rng(0).integers(0, 2, size=20_000)) % 64).astype(np.uint16)
CONFIG = dict(model="tiny", block_size=16, vocab_size=64, batch_size=8, micro_batch_size=4, steps=8, lr=3e-3,
              warmup_steps=2, dropout=0.1, eval_every=4, eval_batches=2, ckpt_every=3, device="cpu", progress=False)
"""
exec(SETUP)                                                     # TOKENS and CONFIG, the same as the subprocesses'
TIMING = ("seconds", "tokens_per_s")


def config(out_dir, **changes):
    return TrainConfig(**{**CONFIG, "out_dir": str(out_dir), **changes})


def run_killed(tmp_path, out_dir, body):
    """Run a training script in a fresh process that SIGKILLs itself as `body` arranges; return the exit code."""
    script = tmp_path / "killed.py"
    script.write_text(SETUP + textwrap.dedent(body).replace("OUT", repr(str(out_dir))), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc


def assert_same_run(a, b, log_a, log_b):
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][key], sb["state"][i][key]), (i, key)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    strip = lambda log: [{k: v for k, v in r.items() if k not in TIMING} for r in log]
    assert strip(read_log(log_a)) == strip(read_log(log_b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return train(config(out), train_tokens=[TOKENS[:16_000]], val_tokens=[TOKENS[16_000:]]), out


def test_kill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    run, ref_out = reference
    out = tmp_path / "run"
    run_killed(tmp_path, out, """
        import os, signal, torch
        from shared.training import train

        class KillAfter(torch.nn.Module):           # SIGKILL in the forward pass of step 5 (after step 3's save)
            def __init__(self, model, calls):
                super().__init__()
                self.model, self.calls = model, calls
            def forward(self, *args, **kwargs):
                self.calls -= 1
                if self.calls < 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                return self.model(*args, **kwargs)

        train(TrainConfig(**CONFIG, out_dir=OUT), train_tokens=[TOKENS[:16_000]], val_tokens=[TOKENS[16_000:]],
              wrap=lambda m: KillAfter(m, 4 * 2 + 1))
    """)
    assert latest_checkpoint(out).name == "ckpt_0000003.pt"
    assert max(r["step"] for r in read_log(out / "log.jsonl")) == 4          # the log ran ahead of the checkpoint
    resumed = train(config(out), train_tokens=[TOKENS[:16_000]], val_tokens=[TOKENS[16_000:]], resume=True)
    assert resumed.step == 8
    assert_same_run(resumed, run, out / "log.jsonl", ref_out / "log.jsonl")


def test_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, reference):
    run, ref_out = reference
    out = tmp_path / "run"
    run_killed(tmp_path, out, """
        import os, signal, torch
        from shared.training import train

        real_save, saves = torch.save, []
        def save_then_die(obj, f, *args, **kwargs):      # the second checkpoint: half its bytes, then SIGKILL
            saves.append(f)
            real_save(obj, f, *args, **kwargs)
            if len(saves) == 2:
                data = open(f, "rb").read()
                open(f, "wb").write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save_then_die
        train(TrainConfig(**CONFIG, out_dir=OUT), train_tokens=[TOKENS[:16_000]], val_tokens=[TOKENS[16_000:]])
    """)
    leftovers = [p for p in out.iterdir() if is_temporary(p)]
    assert len(leftovers) == 1 and not (out / "ckpt_0000006.pt").exists()     # the torn file never got its name
    assert latest_checkpoint(out).name == "ckpt_0000003.pt"
    assert load_checkpoint(out)["step"] == 3
    resumed = train(config(out), train_tokens=[TOKENS[:16_000]], val_tokens=[TOKENS[16_000:]], resume=True)
    assert_same_run(resumed, run, out / "log.jsonl", ref_out / "log.jsonl")
    assert not any(is_temporary(p) for p in out.iterdir())                    # cleaned by the next save


def test_checkpoint_contents_are_plain_data_and_only_the_newest_are_kept(reference):
    run, out = reference
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_0000006.pt", "ckpt_0000008.pt"]
    pointer = json.loads((out / POINTER).read_text(encoding="utf-8"))
    assert pointer["checkpoint"] == "ckpt_0000008.pt" and pointer["step"] == 8
    raw = torch.load(out / "ckpt_0000008.pt", weights_only=True)              # plain torch, nothing of ours
    assert raw["format"] == "llm-book-checkpoint" and raw["version"] == 1 and raw["step"] == 8
    assert raw["model_config"] == dataclasses.asdict(run.model.config)
    assert raw["train_config"]["steps"] == 8 and raw["data_position"] == [0, 16]
    assert set(raw["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert raw["scheduler"]["last_epoch"] == 8
    assert load_model(out).num_params() == run.model.num_params()


def test_a_fresh_run_never_overwrites_an_existing_one(reference):
    _, out = reference
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config(out), train_tokens=[TOKENS])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("change, message", [
    (dict(vocab_size=128), "another model: vocab_size=64 in the file, 128 here"),
    (dict(model="laptop"), "another model: n_layer=2 in the file, 4 here"),
    (dict(lr=1e-3), "another run's checkpoint: lr=0.003 in the file, 0.001 here"),
    (dict(steps=10), "another run's checkpoint: steps=8 in the file, 10 here"),
])
def test_resuming_with_another_model_or_run_is_refused_and_changes_nothing(reference, change, message):
    _, out = reference
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointError) as info:
        train(config(out, **change), train_tokens=[TOKENS], resume=True)
    assert message in str(info.value) and str(out) in str(info.value) and "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resuming_with_another_number_of_ranks_is_refused(reference):
    from shared.parallel.runtime import DistributedContext
    with pytest.raises(CheckpointError, match=r"saved by 1 rank\(s\), this run has 2; resume with 1"):
        train(config(reference[1]), ctx=DistributedContext(world_size=2), train_tokens=[TOKENS], resume=True)


def test_resume_may_change_where_and_how_it_runs(reference, tmp_path):
    payload = load_checkpoint(reference[1])
    cfg = config(tmp_path, eval_every=2, progress=True, ckpt_every=1)
    check_compatible(payload, model_config(cfg, None), dataclasses.asdict(cfg))


def test_broken_files_give_one_line_naming_the_file(reference, tmp_path):
    good = latest_checkpoint(reference[1])
    tiny = GPT(GPTConfig.from_preset("tiny", vocab_size=64, block_size=16))
    files = {
        "empty.pt": (b"", "empty file"),
        "truncated.pt": (good.read_bytes()[: good.stat().st_size // 2], "not a torch.save archive"),
        "random.pt": (np.random.default_rng(0).bytes(5000), "not a torch.save archive"),
        "text.pt": (b"hello", "not a torch.save archive"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    files["foreign.pt"] = (None, "not a llm-book-checkpoint file (keys ['weights'])")
    torch.save({"model": tiny.state_dict(), "config": tiny.config}, tmp_path / "pickled.pt")
    files["pickled.pt"] = (None, "holds a pickled Python object (shared.model.GPTConfig)")
    torch.save({"format": "llm-book-checkpoint", "version": 99}, tmp_path / "newer.pt")
    files["newer.pt"] = (None, "version 99 is not supported")
    (tmp_path / "folder").mkdir()
    files["folder"] = (None, "is a directory without latest.json")
    files["missing.pt"] = (None, "no such checkpoint")
    for name, (_, message) in files.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        text = str(info.value)
        assert message in text and str(tmp_path / name) in text and "\n" not in text, text


def test_a_broken_pointer_is_reported(tmp_path):
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64, block_size=16))
    path = save_checkpoint(tmp_path, model=model, step=1)
    path.write_bytes(path.read_bytes()[:100])                  # replaced behind the pointer's back
    with pytest.raises(CheckpointError, match="points at ckpt_0000001.pt of .* bytes, but it has 100"):
        load_checkpoint(tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match="it is missing"):
        latest_checkpoint(tmp_path)
    (tmp_path / POINTER).write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match="corrupt checkpoint pointer"):
        latest_checkpoint(tmp_path)


def test_load_model_accepts_foreign_state_dicts_when_the_shape_is_named(tmp_path):
    torch.manual_seed(0)
    tiny = GPT(GPTConfig.from_preset("tiny"))
    torch.save(tiny.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="holds no model config: name the model's shape with --preset"):
        load_model(tmp_path / "bare.pt")
    x = torch.randint(0, 50257, (1, 8))
    expected = tiny(x)[0]
    assert torch.equal(load_model(tmp_path / "bare.pt", preset="tiny")(x)[0], expected)
    nano = {"model": {"_orig_mod." + k: v for k, v in tiny.state_dict().items()},
            "model_args": dict(n_layer=2, n_head=2, n_embd=64, block_size=256, bias=True, vocab_size=50257,
                               dropout=0.0), "config": {"batch_size": 12}, "iter_num": 5}
    torch.save(nano, tmp_path / "nanogpt.pt")
    assert torch.equal(load_model(tmp_path / "nanogpt.pt")(x)[0], expected)
    with pytest.raises(CheckpointError, match=r"does not fit the model .*lm_head.weight is \(50257, 64\) in the file, "
                                              r"\(50257, 256\)|does not fit the model"):
        load_model(tmp_path / "bare.pt", preset="laptop")
    with pytest.raises(CheckpointError, match="unknown preset 'nope'"):
        load_model(tmp_path / "bare.pt", preset="nope")
