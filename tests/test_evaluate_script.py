"""ch05_evaluation/evaluate.py: the report validates against its versioned schema; a missing checkpoint, one that
does not match the tokenizer, and bad arguments each give one clear error line."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.checkpoint import save_checkpoint
from shared.files import read_versioned_json
from shared.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ch05_evaluation" / "evaluate.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "LLM_BOOK_OFFLINE": "1", "HOME": str(Path.home()),
                                            "PYTHONHASHSEED": "0"})


def test_report_has_the_stated_schema(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "run", model=model, step=1)
    out = tmp_path / "report.json"
    result = run("--checkpoint", str(tmp_path / "run"), "--tasks", "ppl,mmlu,humaneval", "--limit", "4",
                 "--ppl-chars", "500", "--max-new-tokens", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = read_versioned_json(out, "llm-book-eval-report", 1)          # format, version and checksum
    assert set(report) == {"format", "version", "sha256", "model", "tokenizer", "device", "limit", "seconds",
                           "tasks"}
    assert report["model"]["config"]["block_size"] == 64 and report["limit"] == 4
    ppl, mmlu, he = report["tasks"]["ppl"], report["tasks"]["mmlu"], report["tasks"]["humaneval"]
    assert set(ppl) == {"text", "stride", "tokens", "bytes", "mean_nll", "perplexity", "bits_per_byte"}
    assert set(mmlu) == {"questions", "shots", "micro", "micro_ci95", "macro", "random_baseline", "by_subject"}
    assert set(he) == {"problems", "samples_per_problem", "temperature", "pass_at_k", "statuses"}
    assert mmlu["questions"] == 4 and he["problems"] == 4 and he["pass_at_k"] == {"pass@1": 0.0}
    assert ppl["perplexity"] > 1000                                        # an untrained 50k-vocabulary model


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "no/such/run"], "no such checkpoint"),
    (["--hf", "no/such/folder"], "no such Hugging Face model folder"),
])
def test_missing_models_are_one_error_line(tmp_path, args, message):
    result = run(*args, "--out", str(tmp_path / "r.json"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr


def test_a_checkpoint_that_does_not_fit_the_tokenizer_is_one_error_line(tmp_path):
    model = GPT(GPTConfig(vocab_size=1024, block_size=32, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "run", model=model, step=1)
    result = run("--checkpoint", str(tmp_path / "run"), "--tasks", "ppl", "--out", str(tmp_path / "r.json"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "tokenizer has 50,257 tokens but the model only 1,024 rows" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_corrupt_checkpoint_is_one_error_line(tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    result = run("--checkpoint", str(bad), "--out", str(tmp_path / "r.json"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and str(bad) in result.stderr


@pytest.mark.parametrize("args", [["--random", "tiny", "--tasks", "bleu"], ["--random", "tiny", "--limit", "0"],
                                  ["--random", "tiny", "--workers", "0"]])
def test_bad_arguments_are_refused(args):
    result = run(*args)
    assert result.returncode == 2 and "error:" in result.stderr
