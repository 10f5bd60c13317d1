"""shared/pe_experiment.py (notebook 04) and the chapter script ch01_foundations/positional_experiment.py."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.pe_experiment import (ENCODINGS, CharData, ExperimentConfig, TinyDecoder, evaluate, format_table,
                                  get_batch, load_char_data, per_position_loss, run_experiment, save_results,
                                  train_model)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ch01_foundations" / "positional_experiment.py"


def _script_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location("positional_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _toy_data(n=4000, vocab=12):
    g = torch.Generator().manual_seed(0)
    return CharData(torch.randint(vocab, (n,), generator=g), torch.randint(vocab, (n // 4,), generator=g),
                    [chr(97 + i) for i in range(vocab)], "toy")


TINY = dict(train_context=16, eval_contexts=(16, 32), steps=4, width=16, layers=1, heads=2, batch_size=4,
            eval_tokens=128)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_train_runs_and_returns_finite_losses(encoding):
    model, losses = train_model(encoding, _toy_data(), ExperimentConfig(**TINY))
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    # the first loss is close to uniform guessing over 12 symbols
    assert abs(losses[0] - math.log(12)) < 1.0


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tiny_decoder_is_causal(encoding):
    torch.manual_seed(0)
    model = TinyDecoder(12, encoding, max_len=10, width=16, layers=2, heads=2).eval()
    x = torch.randint(12, (2, 10))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 12
    torch.testing.assert_close(model(x)[:, :6], model(x2)[:, :6])


def test_training_is_reproducible_and_same_batches_for_every_encoding():
    cfg, data = ExperimentConfig(**TINY), _toy_data()
    assert train_model("rope", data, cfg)[1] == train_model("rope", data, cfg)[1]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x1, y1 = get_batch(data.train, 4, 16, g1)
    x2, y2 = get_batch(data.train, 4, 16, g2)
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])


def test_learned_cannot_run_beyond_its_table_and_reports_na():
    cfg, data = ExperimentConfig(**TINY), _toy_data()
    model, _ = train_model("learned", data, cfg)
    assert evaluate(model, data.val, 32, 128) is None
    assert math.isfinite(evaluate(model, data.val, 16, 128))
    with pytest.raises(ValueError, match="cannot run"):
        per_position_loss(model, data.val, 32)


def test_run_experiment_table_and_saved_results(tmp_path):
    result = run_experiment(ExperimentConfig(**TINY), _toy_data())
    assert set(result.val_loss) == set(ENCODINGS)
    assert result.val_loss["learned"][32] is None
    assert all(math.isfinite(v) for e in ("sinusoidal", "rope", "none") for v in result.val_loss[e].values())
    assert len(result.position_loss["rope"]) == 32 and len(result.position_loss["learned"]) == 16
    table = format_table(result)
    assert "n/a" in table and "T=32" in table and len(table.splitlines()) == 2 + len(ENCODINGS)
    paths = save_results(result, tmp_path / "out")
    assert [p.name for p in paths] == ["results.json", "results.csv", "pe_experiment.png"]
    saved = json.loads(paths[0].read_text(encoding="utf-8"))
    assert saved["val_loss"]["learned"]["32"] is None and saved["config"]["steps"] == 4
    assert paths[2].stat().st_size > 1000


def test_per_position_loss_equals_mean_cross_entropy():
    cfg, data = ExperimentConfig(**TINY), _toy_data()
    model, _ = train_model("none", data, cfg)
    per_pos = per_position_loss(model, data.val, 16, eval_tokens=64)          # 4 windows of 16
    windows = data.val[:65]
    with torch.no_grad():
        logits = model(windows[:64].view(4, 16))
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[1:65].view(4, 16).flatten())
    assert abs(per_pos.mean().item() - expected.item()) < 1e-5


def test_real_data_loads_without_overlap():
    data = load_char_data(max_train_chars=20_000)
    assert len(data.train) == 20_000 and len(data.val) > 10_000
    assert data.decode(data.encode("To be")) == "To be"


def test_bad_config_and_encoding_raise():
    with pytest.raises(ValueError, match="unknown encodings"):
        ExperimentConfig(encodings=("alibi",))
    with pytest.raises(ValueError, match="unknown encoding"):
        TinyDecoder(10, "alibi", 8)
    with pytest.raises(ValueError, match="even"):
        TinyDecoder(10, "rope", 8, width=12, heads=4)        # head_dim 3 cannot be rotated in pairs
    with pytest.raises(ValueError, match="positive"):
        ExperimentConfig(train_context=0)


def _run_script(*args):
    env = dict(os.environ, LLM_BOOK_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_script_help():
    result = _run_script("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--device", "--encodings", "--train-context", "--eval-contexts", "--steps", "--width", "--layers",
                 "--heads", "--batch-size", "--lr", "--seed", "--out"):
        assert flag in result.stdout


def test_script_runs_end_to_end(tmp_path):
    result = _run_script("--device", "cpu", "--steps", "3", "--train-context", "16", "--eval-contexts", "16", "32",
                         "--width", "16", "--layers", "1", "--heads", "2", "--batch-size", "4",
                         "--eval-tokens", "128", "--train-chars", "20000", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "n/a" in result.stdout and "T=32" in result.stdout
    assert (tmp_path / "results.csv").exists() and (tmp_path / "pe_experiment.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--train-context", "0"], "--train-context must be a positive integer, got 0"),
    (["--steps", "-1"], "--steps must be a positive integer, got -1"),
    (["--heads", "0"], "--heads must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),      # used to write NaN results
    (["--layers", "0"], "--layers must be a positive integer, got 0"),              # used to write NaN results
    (["--heads", "3"], "must split into 3 --heads"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--source", "nope"], "--source: unknown source 'nope'"),
])
def test_script_bad_values_are_one_line_and_write_nothing(args, message, tmp_path, monkeypatch, capsys):
    main = _script_main()
    monkeypatch.setenv("LLM_BOOK_OFFLINE", "1")
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "out")])
    assert str(info.value) == f"error: {message}" or message in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_script_cuda_on_a_machine_without_it_is_one_line(tmp_path, monkeypatch):
    main = _script_main()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"^error: --device cuda: CUDA is not available on this machine"):
        main(["--device", "cuda", "--out", str(tmp_path / "out")])


def test_one_document_source_is_split_by_position(monkeypatch):
    """The remote variant (Tiny Shakespeare: one text) gets a validation tail instead of a held-out play."""
    from shared import registry
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    monkeypatch.setitem(registry.REGISTRY, "one_text_fixture", registry.Source(
        "one_text_fixture", "fixture", (registry.Loader("fixture", False,
                                                        lambda f: [registry.Document("tinyshakespeare", text)]),)))
    data = load_char_data("one_text_fixture", max_train_chars=None)
    assert data.decode(data.train) + data.decode(data.val) == text and len(data.val) == len(text) - int(len(text) * 0.9)
    assert "first 90% for training" in data.description
