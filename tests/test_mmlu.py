"""shared.evals.mmlu (notebook ch05_evaluation/02_mmlu): the prompt equals the standard template exactly, a model
that always prefers one letter scores that letter's share, an oracle scores 100 %, micro vs macro by hand, batched
scoring equals one prompt at a time."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from shared.evals.mmlu import (MMLUResult, bootstrap_ci, build_prompt, encode_prompt, evaluate_mmlu,
                               few_shot_examples, letter_logprobs, letter_token_ids, subject_accuracies)
from shared.model import GPT, GPTConfig
from shared.registry import MCQuestion, gpt2_encoding, load

Q1 = MCQuestion("What is 2 + 2?", ("3", "4", "5", "22"), 1, "elementary_mathematics")
Q2 = MCQuestion("Which is a prime?", ("4", "6", "7", "9"), 2, "elementary_mathematics")
Q3 = MCQuestion("Who wrote Hamlet?", ("Shakespeare", "Marlowe", "Jonson", "Kyd"), 0, "high_school_european_history")


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_encoding()


def test_zero_shot_prompt_is_the_standard_template_exactly():
    assert build_prompt(Q1) == ("The following are multiple choice questions (with answers) about elementary "
                                "mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")


def test_few_shot_prompt_is_the_standard_template_exactly():
    assert build_prompt(Q2, [Q1]) == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer: B\n\n"
        "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:")


def test_shots_come_from_the_same_subject_and_never_the_question_itself():
    questions = load("mmlu")
    shots = few_shot_examples(questions, 5)
    assert len(shots) == len(questions) == 14042
    for i in range(0, len(questions), 97):
        assert len(shots[i]) == 5
        assert all(s.subject == questions[i].subject for s in shots[i])
        assert all(s is not questions[i] for s in shots[i])
    first_of_subject = {}
    for i, q in enumerate(questions):
        first_of_subject.setdefault(q.subject, i)
    i = first_of_subject["virology"]
    assert questions[i] not in shots[i] and shots[i] == questions[i + 1:i + 6]
    assert few_shot_examples(questions[:3], 0) == [[], [], []]


def test_letters_are_single_gpt2_tokens(tokenizer):
    assert letter_token_ids(tokenizer) == [317, 347, 327, 360]


def test_a_prompt_that_does_not_fit_loses_shots_first(tokenizer):
    full = len(tokenizer.encode(build_prompt(Q2, [Q1, Q3])))
    one = len(tokenizer.encode(build_prompt(Q2, [Q1])))
    assert encode_prompt(tokenizer, Q2, [Q1, Q3], full) == tokenizer.encode(build_prompt(Q2, [Q1, Q3]))
    assert encode_prompt(tokenizer, Q2, [Q1, Q3], full - 1) == tokenizer.encode(build_prompt(Q2, [Q1]))
    assert len(encode_prompt(tokenizer, Q2, [], 5)) == 5 and one < full


class LookupModel(nn.Module):
    """A fake LM: for each (unpadded) prompt, a fixed next-token distribution peaked on one token id."""

    def __init__(self, choose, vocab_size: int, block_size: int = 1024):
        super().__init__()
        self.choose = choose                        # prompt ids (tuple) -> the token id to prefer
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, attention_mask=None, last_only=False, **_):
        assert last_only
        mask = torch.ones_like(idx) if attention_mask is None else attention_mask
        logits = torch.zeros(idx.size(0), 1, self.config.vocab_size)
        for row in range(idx.size(0)):
            prompt = tuple(idx[row][mask[row].bool()].tolist())
            logits[row, 0, self.choose(prompt)] = 5.0
        return logits, None


def test_a_model_that_always_prefers_one_letter_scores_that_letters_share(tokenizer):
    questions = load("mmlu")[::20]
    ids = letter_token_ids(tokenizer)
    for letter in range(4):
        result = evaluate_mmlu(LookupModel(lambda _: ids[letter], tokenizer.n_vocab), tokenizer, questions,
                               batch_size=32, progress=False)
        share = np.mean([q.answer == letter for q in questions])
        assert result.micro == pytest.approx(share)
        assert (result.predictions == letter).all()


def test_an_oracle_scores_100_percent_zero_and_few_shot(tokenizer):
    questions = load("mmlu")[::50]
    ids = letter_token_ids(tokenizer)
    for shots in (0, 2):
        examples = few_shot_examples(questions, shots)
        answer_of = {tuple(encode_prompt(tokenizer, q, ex, 1024)): ids[q.answer] for q, ex in zip(questions, examples)}
        oracle = LookupModel(lambda prompt: answer_of[prompt], tokenizer.n_vocab)
        result = evaluate_mmlu(oracle, tokenizer, questions, shots=shots, batch_size=7, progress=False)
        assert result.micro == 1.0 and result.macro == 1.0


def test_micro_and_macro_match_a_hand_computation():
    # subject a: 3 of 3 right; subject b: 0 of 1 right -> micro 3/4, macro (1 + 0) / 2
    result = MMLUResult(["a", "a", "a", "b"], np.array([0, 1, 2, 3]), np.eye(4)[[0, 1, 2, 0]])
    assert result.micro == pytest.approx(0.75)
    assert result.macro == pytest.approx(0.5)
    assert result.by_subject() == {"a": 1.0, "b": 0.0}
    assert subject_accuracies([1, 0, 1, 1], ["x", "x", "y", "y"]) == {"x": 0.5, "y": 1.0}


def test_batched_scoring_equals_one_prompt_at_a_time(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    questions = load("mmlu")[::700]
    prompts = [encode_prompt(tokenizer, q, ex, 512) for q, ex in zip(questions, few_shot_examples(questions, 1))]
    ids = letter_token_ids(tokenizer)
    one = letter_logprobs(model, prompts, ids, batch_size=1, progress=False)
    batched = letter_logprobs(model, prompts, ids, batch_size=8, progress=False)
    assert np.allclose(one, batched, atol=1e-5)
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompts[3]]))
    assert np.allclose(torch.log_softmax(logits[0, -1], -1)[ids].numpy(), one[3], atol=1e-5)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_questions():
    rng = np.random.default_rng(1)
    small, large = rng.random(100) < 0.3, rng.random(10_000) < 0.3
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert hi_s - lo_s == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 100), abs=0.04)
    assert bootstrap_ci(small) == bootstrap_ci(small)          # seeded


def test_bad_arguments_are_refused(tokenizer):
    with pytest.raises(ValueError, match="k must be"):
        few_shot_examples([Q1], -1)
    with pytest.raises(ValueError, match="batch_size"):
        letter_logprobs(LookupModel(lambda _: 0, 10), [[1]], [0, 1, 2, 3], batch_size=0)
