"""shared/embeddings.py (chapter 1, notebook 02): one-hot @ W is the embedding lookup, the tied output head."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.embeddings import ZeroLayerLM, embedding_cost, embedding_lookup, one_hot_embed, tied_logits


@pytest.mark.parametrize("shape", [(7,), (2, 5), (3, 4, 6)])
@pytest.mark.parametrize("vocab_size,dim", [(11, 4), (257, 16)])
def test_one_hot_matmul_equals_lookup_values_and_gradients(shape, vocab_size, dim):
    g = torch.Generator().manual_seed(sum(shape) + vocab_size)
    ids = torch.randint(0, vocab_size, shape, generator=g)
    ids.view(-1)[-1] = ids.view(-1)[0]          # at least one repeated token, so gradients must accumulate
    weight = torch.randn(vocab_size, dim, generator=g)
    upstream = torch.randn(*shape, dim, generator=g)

    w_hot, w_ref = weight.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out_hot = one_hot_embed(ids, w_hot)
    out_ref = F.embedding(ids, w_ref)            # PyTorch's embedding is the reference
    assert out_hot.shape == (*shape, dim)
    assert torch.equal(out_hot, out_ref)         # bit-exact: 1 * w + 0 * (others)
    assert torch.equal(embedding_lookup(ids, weight), out_ref.detach())
    assert torch.equal(embedding_lookup(ids, weight), nn.Embedding.from_pretrained(weight)(ids))

    (out_hot * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    torch.testing.assert_close(w_hot.grad, w_ref.grad, rtol=0, atol=1e-6)

    # Only looked-up rows get gradient; each is the sum of the upstream gradient at that token's positions.
    nonzero_rows = (w_hot.grad != 0).any(dim=1).nonzero().flatten()
    assert torch.equal(nonzero_rows, ids.unique())
    flat_ids, flat_up = ids.reshape(-1), upstream.reshape(-1, dim)
    for v in ids.unique():
        torch.testing.assert_close(w_hot.grad[v], flat_up[flat_ids == v].sum(0))


def test_gradients_also_equal_through_a_real_loss():
    torch.manual_seed(0)
    ids, targets = torch.randint(0, 50, (2, 9)), torch.randint(0, 50, (2, 9))
    weight = torch.randn(50, 8)
    grads = []
    for embed in (one_hot_embed, embedding_lookup):
        w = weight.clone().requires_grad_(True)
        logits = tied_logits(embed(ids, w), w)           # the weight is used twice: lookup and head
        F.cross_entropy(logits.view(-1, 50), targets.view(-1)).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_tied_logits_is_a_linear_layer_with_the_embedding_matrix():
    torch.manual_seed(0)
    weight, h = torch.randn(100, 12), torch.randn(2, 5, 12)
    head = nn.Linear(12, 100, bias=False)
    head.weight = nn.Parameter(weight)
    assert tied_logits(h, weight).shape == (2, 5, 100)
    torch.testing.assert_close(tied_logits(h, weight), F.linear(h, weight))
    torch.testing.assert_close(tied_logits(h, weight), head(h))
    # logit v is the dot product of h with token v's embedding
    torch.testing.assert_close(tied_logits(h, weight)[1, 3, 42], h[1, 3] @ weight[42])


def test_zero_layer_lm_shapes_tying_and_bigram_table():
    torch.manual_seed(0)
    model = ZeroLayerLM(vocab_size=64, n_embd=8)
    assert model.lm_head.weight is model.wte.weight
    assert sum(p.numel() for p in model.parameters()) == 64 * 8
    untied = ZeroLayerLM(vocab_size=64, n_embd=8, tie_weights=False)
    assert sum(p.numel() for p in untied.parameters()) == 2 * 64 * 8

    idx, targets = torch.randint(0, 64, (3, 7)), torch.randint(0, 64, (3, 7))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 7, 64) and loss.ndim == 0
    assert model(idx)[1] is None
    # Tiny init -> nearly uniform predictions -> loss close to ln V.
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), abs=0.01)
    # No mixing between positions: logits at (b, t) are row idx[b, t] of the V x V logit table.
    table = model.logit_table()
    torch.testing.assert_close(logits, table[idx])
    torch.testing.assert_close(table, table.T)                     # tied -> symmetric
    assert not torch.allclose(untied.logit_table(), untied.logit_table().T)
    # ignore_index=-100 like chapter 3's GPT
    targets[0, :] = -100
    _, masked = model(idx, targets)
    expected = F.cross_entropy(logits[1:].reshape(-1, 64), targets[1:].reshape(-1))
    torch.testing.assert_close(masked, expected)


def test_embedding_cost_counts():
    c = embedding_cost(n_tokens=8 * 1024, vocab_size=50_257, d_model=768)
    assert c["one_hot_macs"] == 8192 * 50_257 * 768 == c["head_macs"]
    assert c["lookup_copies"] == 8192 * 768
    assert c["one_hot_bytes"] == 8192 * 50_257 * 4 == c["logits_bytes"]
    assert c["one_hot_macs"] // c["lookup_copies"] == 50_257
    assert embedding_cost(1, 10, 3, bytes_per_value=2)["weight_bytes"] == 60


def test_bad_input_raises_clear_errors():
    weight = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        one_hot_embed(torch.tensor([0, 10]), weight)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        embedding_lookup(torch.tensor([-1, 3]), weight)
    with pytest.raises(TypeError, match="integer tensor"):
        one_hot_embed(torch.tensor([0.0, 1.0]), weight)
    with pytest.raises(TypeError, match="tensor of token ids"):
        embedding_lookup([0, 1], weight)
    with pytest.raises(ValueError, match="2-D tensor"):
        one_hot_embed(torch.tensor([0]), torch.randn(10))
    with pytest.raises(ValueError, match=r"h must have shape \(\.\.\., 4\)"):
        tied_logits(torch.randn(2, 5), weight)
    model = ZeroLayerLM(10, 4)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="token ids must lie"):
        model(torch.tensor([[1, 2, 10]]))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.tensor([[1, 2]]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="n_embd must be a positive integer"):
        ZeroLayerLM(10, 0)
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        embedding_cost(5, 0, 4)
