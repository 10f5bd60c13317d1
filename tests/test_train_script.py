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

from shared.checkpoint import latest_checkpoint, load_checkpoint
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
