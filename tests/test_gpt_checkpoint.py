"""ch03_model/gpt.py generate --checkpoint: loads chapter 4's checkpoints through shared.checkpoint (one home), bare
state dicts with --preset, and answers broken files with one line and no traceback."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoint import save_checkpoint
from shared.generation import generate
from shared.model import GPT, GPTConfig

SCRIPT = Path(__file__).resolve().parent.parent / "ch03_model" / "gpt.py"


def gpt_py(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "generate", *args, "--max-new-tokens", "6", "--temperature",
                           "0", "--device", "cpu", "--no-stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()


def test_generate_from_a_run_folder_equals_the_model(model, tmp_path):
    save_checkpoint(tmp_path / "run", model=model, step=7)
    result = gpt_py("--checkpoint", str(tmp_path / "run"), "--prompt", "Hello")
    assert result.returncode == 0, result.stderr
    expected = generate(model, torch.tensor([[15496]]), 6, temperature=0)       # "Hello"
    from shared.bpe import gpt2_tokenizer
    assert result.stdout.strip() == gpt2_tokenizer().decode(expected[0].tolist()).strip()


def _gpt_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpt_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_bare_state_dict_needs_preset_and_broken_files_give_one_line(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "bare.pt").read_bytes()[:3000])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"model": model.state_dict(), "config": model.config}, tmp_path / "pickled.pt")
    cases = {"bare.pt": "name the model's shape with --preset", "random.pt": "not a torch.save archive",
             "empty.pt": "empty file", ".": "is a directory", "missing.pt": "no such checkpoint",
             "pickled.pt": "pickled Python object (shared.model.GPTConfig)"}
    main = _gpt_main()
    for name, message in cases.items():                     # in this process: main() exits with one line
        with pytest.raises(SystemExit) as info:
            main(["generate", "--checkpoint", str(tmp_path / name), "--device", "cpu"])
        text = str(info.value.code)
        assert message in text and str(tmp_path / name) in text and "\n" not in text, text
    with pytest.raises(SystemExit, match="does not fit the model"):                 # shapes do not fit tiny
        main(["generate", "--checkpoint", str(tmp_path / "bare.pt"), "--preset", "tiny", "--device", "cpu"])
    result = gpt_py("--checkpoint", str(tmp_path / "truncated.pt"))               # and as a real command
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "not a torch.save archive" in lines[0], result.stderr


def test_bare_state_dict_with_its_preset_loads(tmp_path):
    torch.manual_seed(0)
    tiny = GPT(GPTConfig.from_preset("tiny")).eval()
    torch.save({"_orig_mod." + k: v for k, v in tiny.state_dict().items()}, tmp_path / "bare.pt")
    main = _gpt_main()
    import contextlib, io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["generate", "--checkpoint", str(tmp_path / "bare.pt"), "--preset", "tiny", "--device", "cpu",
                     "--max-new-tokens", "4", "--temperature", "0", "--no-stop"]) == 0
    expected = generate(tiny, torch.tensor([[50256]]), 4, temperature=0)
    from shared.bpe import gpt2_tokenizer
    assert out.getvalue().strip() == gpt2_tokenizer().decode(expected[0].tolist()).strip()
