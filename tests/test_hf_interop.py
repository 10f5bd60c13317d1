"""shared.hf_interop (notebook ch03_model/05_interop): our GPT and transformers' GPT2LMHeadModel give the same logits
with the same weights, in both directions; bad state dicts fail with clear errors.

Tolerance: both models run the same float32 operations in a slightly different order (Conv1D's addmm vs Linear,
HF's Python tanh-GELU vs torch's fused one), so logits agree to rounding error; we require max |diff| <= 1e-5 for
logits of size ~1 (observed: ~2e-7).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model
from transformers.utils import logging as hf_logging

from shared.generation import generate
from shared.hf_interop import (StateDictError, config_from_hf, from_hf, from_pretrained, hf_config_from, hf_to_ours,
                               load_hf_state_dict, ours_to_hf, save_pretrained, to_hf)
from shared.model import GPT, GPTConfig
from shared.registry import gpt2_encoding

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
ATOL = 1e-5


def hf_model(tie=True, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=211, n_positions=40, n_embd=48, n_layer=3, n_head=4, tie_word_embeddings=tie,
                        bos_token_id=210, eos_token_id=210)
    model = GPT2LMHeadModel(config).eval()
    if not tie:   # an untied head, visibly different from the embeddings
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.02)
    return model


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def our_logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


IDX = torch.randint(0, 211, (3, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tie", [True, False])
def test_hf_to_ours_gives_the_same_logits(tie):
    hf = hf_model(tie)
    ours = from_hf(hf)
    assert ours.config.tie_weights == tie and ours.config.block_size == 40
    assert (our_logits(ours, IDX) - hf_logits(hf, IDX)).abs().max() <= ATOL
    # the same through the state dict alone, into a model we built
    fresh = GPT(config_from_hf(hf.config))
    load_hf_state_dict(fresh, hf.state_dict())
    assert torch.equal(our_logits(fresh.eval(), IDX), our_logits(ours, IDX))


@pytest.mark.parametrize("tie", [True, False])
def test_ours_to_hf_gives_the_same_logits(tie):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(vocab_size=211, block_size=40, n_layer=2, n_head=4, n_embd=48, tie_weights=tie)).eval()
    hf = to_hf(ours)
    assert (hf_logits(hf, IDX) - our_logits(ours, IDX)).abs().max() <= ATOL
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tie


def test_save_pretrained_folder_loads_in_transformers_and_back(tmp_path):
    torch.manual_seed(2)
    ours = GPT(GPTConfig(vocab_size=211, block_size=40, n_layer=2, n_head=4, n_embd=48)).eval()
    folder = save_pretrained(ours, tmp_path / "exported")
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    assert (hf_logits(hf, IDX) - our_logits(ours, IDX)).abs().max() <= ATOL
    back = from_pretrained(folder)                       # and into our GPT again: bit for bit
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_round_trip_of_state_dicts_is_exact():
    hf = hf_model()
    ours = hf_to_ours(hf.state_dict(), config_from_hf(hf.config))
    again = ours_to_hf(ours)
    for name, tensor in hf.state_dict().items():
        assert torch.equal(again[name], tensor), name
    assert ours["transformer.h.0.attn.c_attn.weight"].shape == (3 * 48, 48)        # nn.Linear: (out, in)
    assert hf.state_dict()["transformer.h.0.attn.c_attn.weight"].shape == (48, 3 * 48)   # Conv1D: (in, out)


def test_gpt2model_without_head_loads_too():
    hf = hf_model()
    base = GPT2Model(hf.config)
    base.load_state_dict(hf.transformer.state_dict())
    assert not any(k.startswith("transformer.") for k in base.state_dict())
    ours = from_hf(base)
    assert (our_logits(ours, IDX) - hf_logits(hf, IDX)).abs().max() <= ATOL


def test_greedy_generation_matches_transformers_generate():
    hf = hf_model()
    ours = from_hf(hf)
    prompt = IDX[:2, :6]
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=210,
                         attention_mask=torch.ones_like(prompt))
    assert torch.equal(generate(ours, prompt, 20, temperature=0), theirs)


# ---------------------------------------------------------------------------------------------- clear errors
def test_transposed_weight_is_named_with_a_hint():
    state = hf_model().state_dict()
    state["transformer.h.1.mlp.c_fc.weight"] = state["transformer.h.1.mlp.c_fc.weight"].t()
    with pytest.raises(StateDictError, match=r"h\.1\.mlp\.c_fc\.weight: expected .*Conv1D"):
        hf_to_ours(state, config_from_hf(hf_model().config))


def test_missing_and_unexpected_keys_are_named():
    hf = hf_model()
    state = hf.state_dict()
    del state["transformer.ln_f.bias"]
    state["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    with pytest.raises(StateDictError) as err:
        load_hf_state_dict(GPT(config_from_hf(hf.config)), state)
    assert "missing keys: transformer.ln_f.bias" in str(err.value)
    assert "unexpected keys: transformer.h.0.attn.rotary.weight" in str(err.value)


def test_wrong_model_size_is_reported():
    hf = hf_model()
    bigger = GPT(GPTConfig(vocab_size=211, block_size=40, n_layer=4, n_head=4, n_embd=48))
    with pytest.raises(StateDictError, match=r"missing keys: transformer\.h\.3"):
        load_hf_state_dict(bigger, hf.state_dict())
    wider_vocab = GPT(GPTConfig(vocab_size=300, block_size=40, n_layer=3, n_head=4, n_embd=48))
    with pytest.raises(StateDictError, match=r"transformer\.wte\.weight: expected \(300, 48\), got \(211, 48\)"):
        load_hf_state_dict(wider_vocab, hf.state_dict())


def test_untied_head_into_tied_config_is_refused():
    hf = hf_model(tie=False)
    with pytest.raises(StateDictError, match="ties them"):
        hf_to_ours(hf.state_dict(), config_from_hf(hf.config, tie_weights=True))


@pytest.mark.parametrize("change", [dict(pos="rope"), dict(norm="rmsnorm"), dict(prenorm=False), dict(bias=False)])
def test_models_without_a_gpt2_equivalent_cannot_be_exported(change):
    config = GPTConfig(vocab_size=211, block_size=40, n_layer=1, n_head=4, n_embd=48, **change)
    with pytest.raises(ValueError, match="no GPT-2 equivalent"):
        hf_config_from(config)


def test_unsupported_hf_configs_are_refused():
    for kwargs, message in ((dict(activation_function="relu"), "tanh GELU"), (dict(layer_norm_epsilon=1e-6), "1e-5"),
                            (dict(n_inner=100), "4 \\* n_embd")):
        config = GPT2Config(vocab_size=211, n_positions=40, n_embd=48, n_layer=1, n_head=4, bos_token_id=210,
                            eos_token_id=210, **kwargs)
        with pytest.raises(ValueError, match=message):
            config_from_hf(config)


def test_chapter_script_generates_from_an_exported_folder(tmp_path):
    torch.manual_seed(3)
    ours = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    folder = save_pretrained(ours, tmp_path / "exported")
    script = Path(__file__).resolve().parent.parent / "ch03_model" / "gpt.py"
    result = subprocess.run([sys.executable, str(script), "generate", "--hf", str(folder), "--prompt", "Hello",
                             "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = generate(ours, torch.tensor([[15496]]), 8, temperature=0, stop_tokens=[50256])   # "Hello"
    assert result.stdout.strip() == gpt2_encoding().decode(expected[0].tolist()).strip()
