"""Classification fine-tuning (shared/classification.py, chapter 5 notebook 07): the head on the last real token
learns a tiny real batch, padding changes nothing, metrics equal scikit-learn's, bad data is one clear error."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from shared.classification import (GPTClassifier, check_labels, classification_report, split_examples,
                                   train_classifier)
from shared.lora import apply_lora
from shared.model import GPT, GPTConfig
from shared.registry import LabelledText, load

LABELS = ("ham", "spam")
PAD = 256


def encode(text):
    return list(text.encode("utf-8"))


def _classifier(seed=0, max_len=None):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig.from_preset("tiny", vocab_size=257, block_size=160))
    return GPTClassifier(gpt, LABELS, encode, PAD, max_len)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py


@pytest.fixture(scope="module")
def tiny_real_batch():
    """Four ham and four spam messages of the pinned SMS Spam Collection, short ones (fast)."""
    messages = [m for m in load("sms_spam") if len(m.text) <= 80]
    return [m for m in messages if m.label == "ham"][:4] + [m for m in messages if m.label == "spam"][:4]


@pytest.mark.parametrize("variant", ["head only", "lora"])
def test_the_head_learns_a_tiny_real_batch_to_100_percent(tiny_real_batch, variant):
    model = _classifier()
    if variant == "head only":
        model.gpt.requires_grad_(False)
    else:
        apply_lora(model.gpt, rank=4, alpha=8)
    texts, true = [e.text for e in tiny_real_batch], [e.label for e in tiny_real_batch]
    assert classification_report(true, model.predict(texts), LABELS)["accuracy"] < 1.0   # not solved before
    before = {k: v.clone() for k, v in model.gpt.state_dict().items() if "lora_" not in k}
    losses = train_classifier(model, tiny_real_batch, steps=150, batch_size=8, lr=1e-2, seed=0)
    assert classification_report(true, model.predict(texts), LABELS)["accuracy"] == 1.0
    assert losses[-1] < losses[0] / 5
    after = model.gpt.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())                   # the frozen body did not move


def test_the_last_real_token_is_read_and_padding_changes_nothing():
    model = _classifier().eval()
    texts = ["Ok lar...", "WINNER!! Claim your prize now", "k"]
    idx, lengths = model.batch(texts)
    assert lengths.tolist() == [9, 29, 1] and idx.shape == (3, 29) and (idx[0, 9:] == PAD).all()
    with torch.no_grad():
        together = model(idx, lengths)
        alone = torch.cat([model(*model.batch([t])) for t in texts])
        hidden, _ = model.gpt(idx)
        by_hand = model.head(torch.stack([hidden[i, n - 1] for i, n in enumerate(lengths.tolist())]))
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    assert torch.equal(together, by_hand)
    short = GPTClassifier(GPT(GPTConfig.from_preset("tiny", vocab_size=257, block_size=160)), LABELS, encode, PAD, 4)
    assert short.batch(["abcdefgh"])[1].tolist() == [4]                                # cut to max_len


def test_wrong_label_sets_and_empty_splits_are_clear_errors():
    model = _classifier()
    for labels in [("ham",), ("ham", "ham"), ("ham", ""), ()]:
        with pytest.raises(ValueError, match="at least two distinct non-empty strings"):
            check_labels(labels)
    with pytest.raises(ValueError, match="the training split is empty"):
        train_classifier(model, [], steps=1)
    with pytest.raises(ValueError, match=r"the training split: labels \['Spam', 'eggs'\] are not in the label set "
                                         r"\('ham', 'spam'\)"):
        train_classifier(model, [LabelledText("a", "Spam"), LabelledText("b", "eggs"), LabelledText("c", "ham")], 1)
    with pytest.raises(ValueError, match="the evaluation split is empty"):
        classification_report([], [], LABELS)
    with pytest.raises(ValueError, match=r"the predictions: labels \['eggs'\]"):
        classification_report(["ham"], ["eggs"], LABELS)
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        classification_report(["ham", "spam"], ["ham"], LABELS)
    with pytest.raises(ValueError, match="text 1 of the batch is empty"):
        model.batch(["fine", ""])
    with pytest.raises(ValueError, match="max_len=500 must be in 1..block_size=160"):
        _classifier(max_len=500)


def test_split_is_stratified_deduplicated_and_deterministic():
    rows = ([LabelledText(f"ham {i}", "ham") for i in range(80)] + [LabelledText(f"spam {i}", "spam") for i in range(20)]
            + [LabelledText("ham 1", "ham")] * 5 + [LabelledText("both", "ham"), LabelledText("both", "spam")])
    train, test = split_examples(rows, test_fraction=0.25, seed=3)
    assert len(train) + len(test) == 100 and not {e.text for e in train} & {e.text for e in test}
    assert sum(e.label == "spam" for e in test) == 5 and sum(e.label == "ham" for e in test) == 20
    assert "both" not in {e.text for e in train + test}                            # ambiguous: dropped
    assert split_examples(rows, 0.25, seed=3) == (train, test) != split_examples(rows, 0.25, seed=4)
    with pytest.raises(ValueError, match="test_fraction"):
        split_examples(rows, 1.0)


def test_report_equals_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
    rng = random.Random(0)
    labels = ("a", "b", "c", "never")
    true = [rng.choice("abc") for _ in range(200)] + ["never"] * 3
    pred = [t if rng.random() < 0.6 else rng.choice("abc") for t in true]          # "never" is never predicted
    ours = classification_report(true, pred, labels)
    assert ours["confusion"] == confusion_matrix(true, pred, labels=list(labels)).tolist()
    assert ours["accuracy"] == pytest.approx(accuracy_score(true, pred))
    for metric, values in zip(("precision", "recall", "f1", "support"),
                              precision_recall_fscore_support(true, pred, labels=list(labels), zero_division=0)):
        assert [ours["per_class"][k][metric] for k in labels] == pytest.approx(list(np.asarray(values, dtype=float)))
