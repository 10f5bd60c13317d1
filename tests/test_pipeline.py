"""ch05_evaluation/pipeline.py end to end at the "smoke" preset, with real torchrun (2 gloo ranks): the reports
validate against chapter 5's schema (evaluate.py's read_report), the trained model beats the untrained one on
held-out bits per byte, a run interrupted after training is resumed without retraining, shared.pipeline.base_model
returns a loadable model and tokenizer, and bad input is one error line."""
import subprocess
import sys
from pathlib import Path

import pytest

from shared.files import read_versioned_json
from shared.pipeline import REPORT_FORMAT, base_model, base_model_paths, evaluate_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ch05_evaluation" / "pipeline.py"


def run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                                                "LLM_BOOK_OFFLINE": "1", "PYTHONHASHSEED": "0"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke run stopped after its train stage: what an interruption between training and evaluation leaves."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    first = run("--preset", "smoke", "--out", out, "--stop-after", "train")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "torch.distributed.run --standalone --nproc-per-node 2" in first.stdout
    assert not (out / "eval").exists()
    return out


@pytest.fixture(scope="module")
def finished(trained):
    """The same command again, without --stop-after: the run goes on from where it stopped."""
    checkpoint, _ = base_model_paths(trained)
    before = {"mtime": checkpoint.stat().st_mtime_ns, "log": (checkpoint.parent / "log.jsonl").read_text()}
    second = run("--preset", "smoke", "--out", trained)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    return trained, before, second


def test_a_rerun_after_training_does_not_retrain(finished):
    out, before, second = finished
    checkpoint, _ = base_model_paths(out)
    assert "train: done earlier" in second.stdout and "prepare: done earlier" in second.stdout
    assert "torch.distributed.run" not in second.stdout                   # train.py was not launched
    assert checkpoint.stat().st_mtime_ns == before["mtime"] and checkpoint.name == "ckpt_0000040.pt"
    assert (checkpoint.parent / "log.jsonl").read_text() == before["log"]
    assert "evaluate: running" in second.stdout and "report: finished" in second.stdout


def test_reports_validate_and_the_trained_model_beats_the_untrained_one(finished):
    out = finished[0]
    read_report = evaluate_script().read_report
    reports = {p.stem: read_report(p) for p in (out / "eval").glob("*.json") if p.stem not in ("plan", "done")}
    assert set(reports) == {"untrained_ppl", "trained_ppl", "mmlu_0shot", "mmlu_5shot", "humaneval"}
    assert reports["mmlu_5shot"]["tasks"]["mmlu"]["shots"] == 5 and reports["mmlu_0shot"]["limit"] == 12
    untrained = reports["untrained_ppl"]["tasks"]["ppl"]
    trained = reports["trained_ppl"]["tasks"]["ppl"]
    assert untrained["text"] == trained["text"] and untrained["bytes"] == trained["bytes"]
    assert trained["bits_per_byte"] < untrained["bits_per_byte"] - 0.3       # 40 steps: about 4.2 against 4.8
    report = read_versioned_json(out / "report" / "report.json", REPORT_FORMAT, 1)
    assert report["training"]["steps"] == 40 and report["training"]["ranks"] == 2
    assert report["results"][0]["value"] == trained["bits_per_byte"]
    assert [r["step"] for r in report["training"]["curve"]] == [0, 10, 20, 30, 40]
    assert all((out / "report" / name).stat().st_size > 1000 for name in ("bits_per_byte.png", "results.png"))


def test_base_model_returns_a_loadable_model_and_tokenizer(finished, capsys):
    from shared.bpe import get_encoding
    from shared.checkpoint import load_model
    checkpoint, tokenizer = base_model(finished[0], preset="smoke")       # finished: a no-op
    assert "train: done earlier" in capsys.readouterr().out
    assert base_model(finished[0], preset="smoke", echo=lambda line: None) == (checkpoint, tokenizer)
    assert capsys.readouterr().out == ""
    model, encoding = load_model(checkpoint), get_encoding(tokenizer)
    assert encoding.n_vocab == model.config.vocab_size == 1024 and model.config.block_size == 64


@pytest.mark.parametrize("args, message", [
    (["--nproc", "1"], "its train stage was run with other settings (differences: nproc)"),
    (["--nproc", "0"], "must be positive"),
])
def test_changed_settings_and_bad_values_are_one_error_line(finished, args, message):
    result = run("--preset", "smoke", "--out", finished[0], *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_bad_input_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run("--preset", "smoke", "--out", tmp_path / "file")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is a file, not a folder" in result.stderr
    result = run("--preset", "nope")
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
    assert run("--mmlu-limit", "0").returncode == 2


def test_read_report_checks_the_schema(tmp_path):
    from shared.files import FileFormatError, write_versioned_json
    read_report = evaluate_script().read_report
    fields = {"model": {}, "tokenizer": "gpt2", "device": "cpu", "limit": None, "seconds": 1.0}
    good = {**fields, "tasks": {"mmlu": dict.fromkeys(["questions", "shots", "micro", "micro_ci95", "macro",
                                                       "random_baseline", "by_subject"])}}
    write_versioned_json(tmp_path / "good.json", "llm-book-eval-report", 1, good)
    assert read_report(tmp_path / "good.json")["tasks"]["mmlu"]["shots"] is None
    bad = {**fields, "tasks": {"mmlu": {"micro": 0.25}}}
    write_versioned_json(tmp_path / "bad.json", "llm-book-eval-report", 1, bad)
    with pytest.raises(FileFormatError, match="task mmlu has keys"):
        read_report(tmp_path / "bad.json")
