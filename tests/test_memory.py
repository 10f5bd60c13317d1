"""shared.memory (notebook ch03_model/03_memory): the activation-memory formula, saved-tensor counting, the
measured configurations, and the chapter script's command line."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.memory import (FORWARD_CONFIGS, SavedTensorBytes, activation_bytes_per_layer, activation_terms,
                           korthikanti_bytes_per_layer, kv_cache_bytes, measure_forward_backward,
                           model_activation_bytes, results_table)
from shared.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = GPTConfig(vocab_size=64, block_size=128, n_layer=2, n_head=2, n_embd=32)


# ---------------------------------------------------------------------------------------------- the formula
def test_korthikanti_formula_by_hand():
    # s=2, b=1, h=4, a=2: s*b*h*34 = 272, 5*a*s^2*b = 40
    assert korthikanti_bytes_per_layer(2, 1, 4, 2) == 312
    # GPT-2 124M layer at s=1024, b=1: 1024*768*34 + 5*12*1024^2 = 26,738,688 + 62,914,560
    assert korthikanti_bytes_per_layer(1024, 1, 768, 12) == 89_653_248


@pytest.mark.parametrize("s, b, h, a", [(2, 1, 4, 2), (128, 4, 256, 8), (1024, 1, 768, 12), (300, 3, 96, 6)])
def test_the_terms_sum_to_the_closed_form(s, b, h, a):
    assert activation_bytes_per_layer(s, b, h, a) == s * b * h * 34 + 5 * a * s * s * b
    assert activation_bytes_per_layer(s, b, h, a) == korthikanti_bytes_per_layer(s, b, h, a)


def test_formula_variants_by_hand():
    s, b, h, a = 4, 2, 8, 2                     # sbh = 64, a s^2 b = 64
    # fp32, no dropout: 64 sbh + 4 a s^2 b
    assert activation_bytes_per_layer(s, b, h, a, bytes_per_value=4, dropout=False) == 64 * 64 + 4 * 64
    # fused attention: no s^2 term at all
    assert activation_bytes_per_layer(s, b, h, a, bytes_per_value=4, dropout=False, fused_attention=True) == 64 * 64
    # 16-bit, no dropout: 32 sbh + 2 a s^2 b
    assert activation_bytes_per_layer(s, b, h, a, dropout=False) == 32 * 64 + 2 * 64
    # autocast: 4-byte norm inputs (36 sbh), fp32 softmax + its bf16 copy (6 a s^2 b)
    assert activation_bytes_per_layer(s, b, h, a, dropout=False, autocast=True) == 36 * 64 + 6 * 64
    terms = activation_terms(s, b, h, a, small_terms=True, fused_attention=True, dropout=False)
    assert terms["log-sum-exp per query (fp32)"] == 4 * a * s * b
    assert terms["norm statistics (mean, 1/std)"] == 16 * s * b


def test_kv_cache_formula_matches_the_model_cache():
    model = GPT(TINY).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(3, 5, dtype=torch.long), cache=cache)
    assert cache.nbytes() == kv_cache_bytes(TINY, TINY.block_size, batch=3)      # preallocated to block_size
    assert kv_cache_bytes(GPTConfig.from_preset("gpt2"), 1024, bytes_per_value=2) == 2 * 12 * 1024 * 768 * 2


# ---------------------------------------------------------------------------------------------- counting
def test_saved_tensor_bytes_on_a_hand_example():
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(16, 32))      # x @ w saves x (for w's gradient) and w (for x's)
    module = torch.nn.Module()
    module.w = w
    with SavedTensorBytes(module) as saved:
        F.gelu(x @ w)
    assert saved.bytes == 8 * 16 * 4 + 8 * 32 * 4          # x and the GELU input; the parameter is excluded
    with SavedTensorBytes() as saved:                        # without the module, w counts too
        F.gelu(x @ w)
    assert saved.bytes == 8 * 16 * 4 + 8 * 32 * 4 + 16 * 32 * 4


def test_views_of_one_buffer_count_once():
    x = torch.randn(4, 6, requires_grad=True)
    with SavedTensorBytes() as saved:
        y = x * 2
        a, b = y.split(3, dim=1)
        (a * b).sum()                                        # saves two views of y's storage
    assert saved.bytes == 4 * 6 * 4


def test_one_block_matches_the_formula_exactly():
    for attn in ("naive", "sdpa"):
        torch.manual_seed(0)
        block = GPT(GPTConfig(vocab_size=64, block_size=128, n_layer=1, n_head=4, n_embd=64, attn=attn)).transformer.h[0]
        x = torch.randn(2, 96, 64, requires_grad=True)
        with SavedTensorBytes(block) as saved:
            block(x)
        expected = activation_bytes_per_layer(96, 2, 64, 4, bytes_per_value=4, dropout=False,
                                              fused_attention=attn == "sdpa", small_terms=True)
        assert saved.bytes == expected, attn


# ---------------------------------------------------------------------------------------------- configurations
@pytest.fixture(scope="module")
def measured():
    return {name: measure_forward_backward(TINY, name, 128, batch=2, repeats=0) for name in FORWARD_CONFIGS}


def test_measured_memory_is_close_to_the_formula(measured):
    for name, r in measured.items():
        # the formula leaves out small terms (norm statistics, the targets, the causal mask): a few % at this size
        assert 1.0 <= r["saved_bytes"] / r["formula_bytes"] < 1.05, name
        assert r["seconds"] is None and r["peak_bytes"] is None


def test_checkpointing_fused_attention_and_bf16_reduce_saved_activations(measured):
    saved = {name: r["saved_bytes"] for name, r in measured.items()}
    assert saved["sdpa"] < saved["naive"]
    assert saved["sdpa+bf16"] < 0.8 * saved["sdpa"]
    assert saved["sdpa+checkpoint"] < 0.5 * saved["sdpa"]
    # outside the blocks both save the same; inside, checkpointing keeps only each block's fp32 input (4 s b h bytes)
    full_block = activation_bytes_per_layer(128, 2, 32, 2, bytes_per_value=4, dropout=False, fused_attention=True,
                                            small_terms=True)
    assert saved["sdpa"] - saved["sdpa+checkpoint"] == TINY.n_layer * (full_block - 4 * 128 * 2 * 32)
    assert measured["sdpa+bf16"]["parameter_cast_bytes"] > 0 and measured["sdpa"]["parameter_cast_bytes"] == 0


def test_checkpointing_saves_less_at_every_length():
    for s in (32, 64):
        plain = measure_forward_backward(TINY, "sdpa", s, repeats=0)["saved_bytes"]
        ckpt = measure_forward_backward(TINY, "sdpa+checkpoint", s, repeats=0)["saved_bytes"]
        assert ckpt < plain


def test_timed_measurement_and_table():
    r = measure_forward_backward(TINY, "sdpa+checkpoint", 32, repeats=1)
    assert r["seconds"] > 0
    table = results_table([r], ("saved_bytes", "formula_bytes", "ratio", "seconds"))
    assert "sdpa+checkpoint" in table and "fwd+bwd ms" in table and len(table.splitlines()) == 3
    with pytest.raises(ValueError, match="unknown column"):
        results_table([r], ("bogus",))


def test_bad_measurements_raise():
    with pytest.raises(ValueError, match="unknown forward configuration"):
        measure_forward_backward(TINY, "flash9", 32)
    with pytest.raises(ValueError, match="block_size"):
        measure_forward_backward(TINY, "sdpa", 4096)


# ---------------------------------------------------------------------------------------------- the script
def run_script(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "ch03_model" / "gpt.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["memory", "--help"]])
def test_script_help(args):
    result = run_script(*args)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout
    if args[0] == "memory":
        assert "--seq-lens" in result.stdout and "--configs" in result.stdout and "--device" in result.stdout
    if args[0] == "generate":
        assert "--checkpoint" in result.stdout and "--top-p" in result.stdout and "--stream" in result.stdout


def test_script_memory_and_generate_run(tmp_path):
    result = run_script("memory", "--preset", "tiny", "--vocab-size", "64", "--configs", "naive", "sdpa+checkpoint",
                        "--seq-lens", "16", "32", "--repeats", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "sdpa+checkpoint" in result.stdout and "saved MiB" in result.stdout
    # a checkpoint file with its config, as chapter 4's trainer writes it
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny")
    torch.save({"model": GPT(config).state_dict(), "config": config.__dict__}, tmp_path / "ckpt.pt")
    result = run_script("generate", "--checkpoint", str(tmp_path / "ckpt.pt"), "--prompt", "Hello",
                        "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu", "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello") and "tokens/s" in result.stderr
    result = run_script("generate", "--preset", "tiny", "--max-new-tokens", "3", "--device", "cpu")
    assert result.returncode == 0 and "RANDOM weights" in result.stderr
    result = run_script("generate", "--checkpoint", str(tmp_path / "missing.pt"))
    assert result.returncode != 0 and "no such checkpoint" in result.stderr and "Traceback" not in result.stderr
