"""ch04_distributed/train.py under torchrun with 2 CPU ranks (gloo) on chapter 2's real shards: it trains, logs,
checkpoints and resumes; bad settings fail in one line before any process group starts; a killed rank ends the
job within a minute."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from shared.checkpoint import latest_checkpoint, load_checkpoint, load_model
from shared.parallel.runtime import finish_torchrun, run_torchrun, start_torchrun
from shared.training import read_log

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ch04_distributed" / "train.py"
ENV = {**os.environ, "LLM_BOOK_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SMALL = ["--block-size", "32", "--batch-size", "8", "--micro-batch-size", "2", "--eval-batches", "2",
         "--warmup-steps", "2", "--lr", "3e-3", "--no-progress", "--dist-timeout", "30"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Chapter 2's pipeline on two Shakespeare plays with the GPT-2 tokenizer (real shards, a manifest)."""
    out = tmp_path_factory.mktemp("data") / "shakespeare-gpt2"
    proc = subprocess.run([sys.executable, str(ROOT / "ch02_data" / "prepare_data.py"), "--max-docs", "2",
                           "--val-fraction", "0.5", "--out", str(out)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def torchrun(*args, ranks=2, timeout=300) -> subprocess.CompletedProcess:
    """train.py under torchrun, waited for: exit code and the merged stdout and stderr (as .stdout)."""
    return run_torchrun(SCRIPT, *args, nproc=ranks, timeout=timeout, env={"LLM_BOOK_OFFLINE": "1"})


def start(*args, ranks=2) -> subprocess.Popen:
    """train.py under torchrun, started (in a session of its own) and left running."""
    return start_torchrun(SCRIPT, *args, nproc=ranks, env={"LLM_BOOK_OFFLINE": "1"})


def _train_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")     # @record, run inside pytest's capture
def test_bad_settings_fail_in_one_line_before_any_work(tmp_path, data, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cases = [(["--steps", "0"], "steps must be a positive integer"),
             (["--batch-size", "6", "--micro-batch-size", "4"], "multiple of 4"),
             (["--model", "gpt5"], "not a model preset"),
             (["--data", str(tmp_path / "nowhere")], "no manifest.json"),
             (["--strategy", "ddp"], "needs several ranks")]
    main = _train_main()
    for args, message in cases:                       # in this process: main() returns 2 after one line
        assert main(["--data", str(data), "--out-dir", str(tmp_path / "run"), *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "3")             # what torchrun --nproc-per-node 3 would set
    assert main(["--data", str(data), "--batch-size", "16", "--micro-batch-size", "4"]) == 2
    assert "cannot be split into 3 rank(s)" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--lr", "-1"], env=ENV,
                          capture_output=True, text=True, timeout=120)           # and as a real command
    assert proc.returncode == 2 and proc.stderr.strip() == "error: lr must be a positive number, got -1.0"


def test_two_ranks_train_log_checkpoint_and_resume(tmp_path, data):
    out = tmp_path / "run"
    proc = torchrun("--data", str(data), "--out-dir", str(out), "--steps", "16", "--eval-every", "8",
                    "--ckpt-every", "8", *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 rank(s), strategy ddp" in proc.stdout
    log = read_log(out / "log.jsonl")
    steps = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in steps] == list(range(1, 17)) and [r["step"] for r in evals] == [0, 8, 16]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0          # from ln(50257) = 10.8 it falls
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.0
    assert all(r["tokens"] == r["step"] * 8 * 32 for r in steps)
    payload = load_checkpoint(out)
    assert payload["step"] == 16 and len(payload["rng"]) == 2 and payload["model_config"]["vocab_size"] == 50257
    # the same command again, without --resume, is refused before any work (the run is not overwritten)
    proc = torchrun("--data", str(data), "--out-dir", str(out), "--steps", "16", *SMALL)
    assert proc.returncode != 0 and "add --resume" in proc.stdout


def test_resume_under_torchrun_equals_the_uninterrupted_run(tmp_path, data):
    # with dropout, so that every rank's random state must be restored too
    common = ["--data", str(data), "--steps", "8", "--eval-every", "4", "--ckpt-every", "4", "--dropout", "0.1", *SMALL]
    full, part = tmp_path / "full", tmp_path / "part"
    assert torchrun("--out-dir", str(full), *common).returncode == 0
    # stop a run after its step-4 checkpoint: kill the whole job once latest.json names ckpt_0000004.pt
    job = start("--out-dir", str(part), *common)
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        pointer = part / "latest.json"
        if pointer.exists() and json.loads(pointer.read_text(encoding="utf-8"))["step"] == 4:
            _kill_job(job)
            break
        time.sleep(0.05)
    finish_torchrun(job, timeout=60)
    if latest_checkpoint(part).name != "ckpt_0000004.pt":
        pytest.skip("the job finished before it could be killed (a very fast machine)")
    proc = torchrun("--out-dir", str(part), "--resume", *common)
    assert proc.returncode == 0, proc.stdout[-3000:]
    a, b = load_checkpoint(part), load_checkpoint(full)
    assert a["step"] == b["step"] == 8
    assert all((a["model"][k] == b["model"][k]).all() for k in a["model"])
    for i in a["optimizer"]["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            assert (a["optimizer"]["state"][i][key] == b["optimizer"]["state"][i][key]).all()
    # notebook 03's from-scratch bucketed DDP (tiny buckets: several per step) trains the same model
    bucketed = tmp_path / "bucketed"
    proc = torchrun("--out-dir", str(bucketed), "--strategy", "ddp_bucketed", "--bucket-cap-mb", "0.05", *common)
    assert proc.returncode == 0 and "strategy ddp_bucketed" in proc.stdout, proc.stdout[-3000:]
    c = load_checkpoint(bucketed)
    assert all(torch.allclose(c["model"][k], b["model"][k], atol=1e-6, rtol=0) for k in b["model"])


def test_a_killed_rank_ends_the_job_within_a_minute(tmp_path, data):
    out = tmp_path / "run"
    job = start("--data", str(data), "--out-dir", str(out), "--steps", "100000", "--eval-every", "0", *SMALL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(read_log(out / "log.jsonl")) < 3:   # training is under way
            assert job.poll() is None, job.communicate()[0][-3000:]
            time.sleep(0.2)
        rank1 = [p for p in psutil.Process(job.pid).children(recursive=True) if _rank_of(p) == "1"]
        assert len(rank1) == 1
        killed_at = time.time()
        rank1[0].send_signal(signal.SIGKILL)
        output = finish_torchrun(job, timeout=60).stdout
        elapsed = time.time() - killed_at
    finally:
        if job.poll() is None:
            _kill_job(job)
    assert job.returncode != 0 and elapsed < 60
    assert "ChildFailedError" in output or "FAILED" in output, output[-3000:]
    assert "Signal 9 (SIGKILL)" in output or "SIGKILL" in output, output[-3000:]


def _kill_job(job) -> None:
    """SIGKILL torchrun and every worker, as a crash would. torchrun starts each worker in a session of its own, so
    killing torchrun's process group alone leaves them training to the end (and the resume test skipped)."""
    workers = psutil.Process(job.pid).children(recursive=True)
    os.killpg(job.pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()


def _rank_of(process) -> str | None:
    """torchrun tells each worker its rank in the environment."""
    try:
        return process.environ().get("RANK")
    except psutil.Error:
        return None


# ------------------------------------------------------------------ --strategy tp and fsdp (issue 9)
STRATEGY_RUN = ["--steps", "4", "--ckpt-every", "2", "--eval-every", "0", *SMALL]
LOSS_RTOL = 1e-4          # fp32 on a CPU: split matrix products and sharded reductions add in another order


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory, data) -> Path:
    """The same 4 steps on the same data trained by one process (ROOT/single), by 2 tensor-parallel ranks which
    both read every batch (ROOT/tp), by 2 FSDP ranks which read half of every batch each (ROOT/fsdp), and by 4
    ranks as 2 data-parallel replicas x 2 tensor-parallel ranks (ROOT/dp2xtp2). The jobs run at the same time."""
    root = tmp_path_factory.mktemp("strategies")
    single = subprocess.Popen([sys.executable, str(SCRIPT), "--data", str(data), "--out-dir", str(root / "single"),
                               *STRATEGY_RUN], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = {name: start("--data", str(data), "--out-dir", str(root / name), *flags, *STRATEGY_RUN, ranks=ranks)
            for name, flags, ranks in [("tp", ["--strategy", "tp"], 2), ("fsdp", ["--strategy", "fsdp"], 2),
                                       ("dp2xtp2", ["--strategy", "tp", "--tp-degree", "2"], 4)]}
    output = single.communicate(timeout=300)[0]
    assert single.returncode == 0, output[-3000:]
    for name, job in jobs.items():
        proc = finish_torchrun(job, timeout=300)
        assert proc.returncode == 0 and "done: step 4/4" in proc.stdout, proc.stdout[-3000:]
    return root


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl") if r["kind"] == "train"]


def _near(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """Equal up to rtol of the tensor's largest entry (Adam's moments of near-zero gradients differ relatively
    much between summation orders; a wrong slice or order would be off by the size of the entries themselves)."""
    return a.shape == b.shape and bool((a - b).abs().max() <= rtol * b.abs().max() + 1e-12)


@pytest.mark.parametrize("strategy", ["tp", "fsdp", "dp2xtp2"])
def test_tp_and_fsdp_train_like_one_process_and_save_a_model_one_process_loads(strategy_runs, strategy):
    single, run = strategy_runs / "single", strategy_runs / strategy
    reference, losses = _losses(single), _losses(run)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert losses == pytest.approx(reference, rel=LOSS_RTOL)
    # the checkpoint file holds the whole model, with the keys and shapes of a one-process run ...
    a, b = load_checkpoint(run), load_checkpoint(single)
    assert a["step"] == 4 and a["model"].keys() == b["model"].keys()
    assert all(_near(a["model"][k], b["model"][k], 1e-2) for k in b["model"])
    # ... which shared.checkpoint.load_model (chapter 5's evaluate.py, gpt.py generate) loads in one process
    x = torch.randint(50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, reference_logits = load_model(run).eval()(x)[0], load_model(single).eval()(x)[0]
    assert torch.allclose(logits, reference_logits, rtol=0, atol=1e-3), (logits - reference_logits).abs().max()
    if strategy != "fsdp":        # the optimizer state gathered whole: the layout of the one-process run
        assert a["parallel"] == {"strategy": "tp", "data_world": 1 if strategy == "tp" else 2, "checkpoint": "full"}
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for i, state in b["optimizer"]["state"].items():
            assert all(_near(a["optimizer"]["state"][i][k], state[k], 1e-2) for k in ("exp_avg", "exp_avg_sq"))
    else:                         # the optimizer state is in the DCP folder beside the file, each rank its shards
        assert a["parallel"] == {"strategy": "fsdp", "data_world": 2, "checkpoint": "dcp"} and a["optimizer"] is None
        assert sorted(p.name for p in run.glob("ckpt_*")) == ["ckpt_0000002.dcp", "ckpt_0000002.pt",
                                                                "ckpt_0000004.dcp", "ckpt_0000004.pt"]
        from shared.model import GPTConfig
        from shared.parallel.sharded import load_unsharded_model
        dcp_model = load_unsharded_model(run / "ckpt_0000004.dcp", GPTConfig(**a["model_config"]))
        assert all(torch.equal(v, a["model"][k]) for k, v in dcp_model.state_dict().items())


def _rewind(run: Path, to: Path, step: int) -> Path:
    """A copy of `run` as a job killed right after its step-`step` checkpoint leaves it (the kill itself, with
    DDP, is test_resume_under_torchrun_equals_the_uninterrupted_run's)."""
    import shutil

    from shared.checkpoint import POINTER, POINTER_FORMAT
    from shared.files import write_versioned_json
    shutil.copytree(run, to)
    for later in to.glob("ckpt_*"):
        if int(later.stem.split("_")[1]) > step:
            shutil.rmtree(later) if later.is_dir() else later.unlink()
    path = to / f"ckpt_{step:07d}.pt"
    write_versioned_json(to / POINTER, POINTER_FORMAT, 1, {"checkpoint": path.name, "step": step,
                                                           "bytes": path.stat().st_size})
    return to


def test_tp_and_fsdp_resume_where_the_run_stopped(strategy_runs, data, tmp_path):
    parts = {strategy: _rewind(strategy_runs / strategy, tmp_path / strategy, step=2) for strategy in ("tp", "fsdp")}
    refused = _rewind(strategy_runs / "fsdp", tmp_path / "fsdp-as-ddp", step=2)
    jobs = {strategy: start("--data", str(data), "--out-dir", str(part), "--strategy", strategy, "--resume",
                            *STRATEGY_RUN) for strategy, part in parts.items()}
    # resuming FSDP's shards with DDP is refused in one line (test_training has the other cases)
    jobs["ddp"] = start("--data", str(data), "--out-dir", str(refused), "--strategy", "ddp", "--resume",
                        *STRATEGY_RUN)
    done = {name: finish_torchrun(job, timeout=300) for name, job in jobs.items()}
    errors = [line for line in done["ddp"].stdout.splitlines() if line.startswith("error:")]
    assert done["ddp"].returncode != 0 and len(errors) == 1 and "resume with --strategy fsdp" in errors[0], errors
    for strategy, part in parts.items():
        assert done[strategy].returncode == 0, done[strategy].stdout[-3000:]
        full = strategy_runs / strategy
        assert _losses(part) == _losses(full)                   # the curve goes on as it did, to the last bit
        a, b = load_checkpoint(part), load_checkpoint(full)
        assert a["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    a, b = load_checkpoint(parts["tp"]), load_checkpoint(strategy_runs / "tp")
    for i, state in b["optimizer"]["state"].items():            # Adam's moments were restored, not re-created
        assert all(torch.equal(a["optimizer"]["state"][i][k], state[k]) for k in ("exp_avg", "exp_avg_sq"))


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
def test_impossible_strategies_fail_in_one_line_before_any_work(tmp_path, data, capsys, monkeypatch):
    cases = [(2, ["--strategy", "tp", "--tp-degree", "3"], "--tp-degree 3 does not divide the 2 ranks"),
             (2, ["--strategy", "ddp", "--tp-degree", "2"], "--tp-degree is the degree of --strategy tp"),
             (3, ["--strategy", "tp"], "n_head divisible by 3"),                 # the tiny model has 2 heads
             (4, ["--strategy", "tp", "--tp-degree", "2", "--micro-batch-size", "8"],
              "cannot be split into 2 rank(s)"),               # 8 sequences over 2 data-parallel replicas x 8
             (1, ["--strategy", "fsdp"], "needs several ranks"),
             (2, ["--strategy", "fsdp", "--device", "mps"], "MPS")]
    main = _train_main()
    for world, args, message in cases:
        monkeypatch.setenv("WORLD_SIZE", str(world))
        assert main(["--data", str(data), "--out-dir", str(tmp_path / "run"), *SMALL, *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not (tmp_path / "run").exists()
    monkeypatch.delenv("WORLD_SIZE")
    # under torchrun: one line from rank 0, and no rank starts training
    proc = torchrun("--data", str(data), "--out-dir", str(tmp_path / "run"), "--strategy", "tp", "--tp-degree", "3",
                    *SMALL)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and errors == ["error: --tp-degree 3 does not divide the 2 ranks: the world size "
                                               "must be data-parallel replicas x tensor-parallel degree"]
    assert not (tmp_path / "run").exists()
