"""LoRA (shared/lora.py, chapter 5 notebook 06): equal to the base at init, merge/unmerge, gradients only for the
adapters, equal to Hugging Face peft on the same GPT-2 (forward and gradients), adapter files round-trip and fail
clearly."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from shared.lora import (LoRAFileError, LoRALinear, apply_lora, count_parameters, load_lora, lora_settings,
                         lora_state_dict, merge_lora, read_lora, save_lora, unmerge_lora)
from shared.model import GPT, GPTConfig

CONFIG = GPTConfig.from_preset("tiny", vocab_size=97, block_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=97, block_size=32, **overrides))


def _randomise_b(model, seed=1, std=0.05):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=std)


def _ids(seed=2, shape=(2, 16)):
    return torch.randint(0, 97, shape, generator=torch.Generator().manual_seed(seed))


def test_at_init_the_adapted_model_equals_the_base_exactly():
    model, ids = _model().eval(), _ids()
    before, _ = model(ids)
    names = apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                    "mlp.c_proj"))
    assert len(names) == 4 * CONFIG.n_layer
    assert torch.equal(model.train()(ids)[0], before)      # even in training mode, with dropout: B = 0
    C, L = CONFIG.n_embd, CONFIG.n_layer
    assert count_parameters(model)[0] == L * 4 * (C + 3 * C + C + C + C + 4 * C + 4 * C + C)


def test_targets_are_matched_by_name_and_bad_requests_leave_the_model_untouched():
    model = _model()
    assert apply_lora(model, targets="c_proj") == [f"transformer.h.{i}.{k}.c_proj" for i in range(2)
                                                   for k in ("attn", "mlp")]
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model)
    for bad, message in [(dict(targets=("qkv",)), "matches no nn.Linear.*attn.c_attn, attn.c_proj, lm_head"),
                         (dict(targets=("lm_head",)), "tied weights"), (dict(rank=0), "rank"),
                         (dict(alpha=-1), "alpha"), (dict(dropout=1.0), "dropout"), (dict(targets=()), "at least one")]:
        fresh = _model()
        with pytest.raises(ValueError, match=message):
            apply_lora(fresh, **bad)
        assert not any(isinstance(m, LoRALinear) for m in fresh.modules())
        assert all(p.requires_grad for p in fresh.parameters())          # nothing was frozen either
    untied = _model(tie_weights=False)
    assert apply_lora(untied, targets=("lm_head",)) == ["lm_head"]       # untied: allowed


def test_merge_then_unmerge_restores_the_weights_and_merged_logits_match():
    model = _model()
    apply_lora(model, rank=4, alpha=8)
    _randomise_b(model)
    model.eval()
    ids = _ids()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    side, _ = model(ids)
    assert merge_lora(model) == 2 * CONFIG.n_layer and merge_lora(model) == 0     # merging twice is a no-op
    changed = [k for k in weights if not torch.equal(model.state_dict()[k], weights[k])]
    assert sorted(changed) == sorted(f"transformer.h.{i}.attn.{n}.weight" for i in range(2) for n in ("c_attn", "c_proj"))
    merged, _ = model(ids)
    torch.testing.assert_close(merged, side, rtol=0, atol=1e-5)
    assert unmerge_lora(model) == 2 * CONFIG.n_layer
    for k, v in weights.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)


def test_only_adapter_parameters_get_gradients():
    model = _model()
    apply_lora(model, rank=4, alpha=8)
    _randomise_b(model)
    ids = _ids()
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(lora_state_dict(model)) and len(with_grad) == 4 * CONFIG.n_layer
    assert all(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if p.grad is not None)
    # and one optimizer step changes the adapters only
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == set(lora_state_dict(model))


def _peft_pair(dtype):
    from transformers import GPT2Config, GPT2LMHeadModel
    from shared.hf_interop import from_hf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=96,
                                        eos_token_id=96)).eval()
        ours = from_hf(hf)
        theirs = get_peft_model(hf, LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0,
                                               target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True))
    apply_lora(ours, rank=4, alpha=16, targets=("c_attn", "c_proj", "c_fc"))
    rename = lambda k: k.removeprefix("base_model.model.").replace(".default.weight", "")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    adapters = {rename(k): v for k, v in theirs.named_parameters() if "lora_" in k}
    assert set(adapters) == set(lora_state_dict(ours))                    # the same layers, the same shapes
    ours.load_state_dict(adapters, strict=False)
    return theirs.to(dtype), ours.to(dtype), rename


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_ours_equals_peft_forward_and_gradients(dtype, tol):
    theirs, ours, rename = _peft_pair(dtype)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()
    ids, targets = _ids(3, (3, 20)), _ids(4, (3, 20))
    their_logits = theirs(input_ids=ids).logits
    our_logits, _ = ours(ids)
    torch.testing.assert_close(our_logits, their_logits, rtol=0, atol=tol)
    for logits in (their_logits, our_logits):
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    ours_params = dict(ours.named_parameters())
    compared = 0
    for name, p in theirs.named_parameters():
        if "lora_" in name:
            mine = ours_params[rename(name)].grad
            assert mine.abs().max() > 0                                  # a comparison of zeros would prove nothing
            torch.testing.assert_close(mine, p.grad, rtol=0, atol=tol)
            compared += 1
    assert compared == 2 * 3 * 2 + 2 * 2                                 # A and B: c_attn, attn/mlp c_proj, c_fc


def test_saved_adapter_reloads_to_equal_logits(tmp_path):
    model = _model()
    apply_lora(model, rank=2, alpha=4, targets=("attn.c_attn", "mlp.c_fc"))
    _randomise_b(model)
    ids = _ids()
    path = save_lora(model, tmp_path / "sub" / "adapter.safetensors", config={"base": "tiny seed 0"})
    settings, config, tensors = read_lora(path)
    assert settings == lora_settings(model) and config == {"base": "tiny seed 0"} and set(tensors) == set(lora_state_dict(model))
    assert not list((tmp_path / "sub").glob(".*.tmp"))                   # written atomically, nothing left over
    fresh = load_lora(_model(), path)                                    # a plain base model gets the adapters
    assert torch.equal(fresh.eval()(ids)[0], model.eval()(ids)[0])
    again = _model()
    apply_lora(again, rank=2, alpha=4, targets=("attn.c_attn", "mlp.c_fc"))
    assert torch.equal(load_lora(again, path).eval()(ids)[0], model(ids)[0])   # a model with the same adapters


def test_bad_adapter_files_are_one_clear_error(tmp_path):
    model = _model()
    apply_lora(model, rank=2, alpha=4)
    _randomise_b(model)
    path = save_lora(model, tmp_path / "adapter.safetensors")
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    cases = {"missing.safetensors": None, "flipped.safetensors": bytes(flipped), "truncated.safetensors": data[:50],
             "garbage.safetensors": b"<html>502 Bad Gateway</html>", "empty.safetensors": b""}
    expected = {"missing": "no such LoRA adapter file", "flipped": "checksum mismatch", "truncated": "corrupt",
                "garbage": "corrupt", "empty": "corrupt"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(LoRAFileError, match=expected[name.split(".")[0]]) as info:
            load_lora(_model(), tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)
    # someone else's safetensors file
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LoRAFileError, match="not a LoRA adapter file"):
        read_lora(tmp_path / "other.safetensors")
    # a file for another model: wrong width, or layers this model lacks
    with pytest.raises(LoRAFileError, match="do not fit this model"):
        load_lora(_model(n_embd=32), path)
    with pytest.raises(LoRAFileError, match="do not fit this model"):
        load_lora(_model(n_layer=1), path)
    merged = load_lora(_model(), path)
    merge_lora(merged)
    with pytest.raises(LoRAFileError, match="merged model"):
        load_lora(merged, path)
