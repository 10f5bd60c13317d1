"""shared.evals.contamination (notebook ch05_evaluation/04_contamination): n-gram overlap finds planted benchmark
items, misses clean ones, and its fractions match a hand computation with chapter 2's shingles."""
import numpy as np
import pytest

from shared.dedup import ngrams, words
from shared.evals.contamination import near_duplicates, ngram_index, ngram_overlap, word_windows

CORPUS = ["the cat sat on the mat and looked at the dog across the room for a very long time",
          "an entirely different sentence about trains stations and timetables in the north"]


def test_overlap_fraction_matches_a_hand_count_with_chapter_2s_ngrams():
    item = "The cat sat on the MAT, and then it slept"
    n = 3
    train = {g for text in CORPUS for g in ngrams(words(text), n)}
    grams = ngrams(words(item), n)
    expected = sum(g in train for g in grams)
    hits, fraction = ngram_overlap([item], ngram_index(CORPUS, n), n)
    assert hits[0] == expected == 5 and fraction[0] == pytest.approx(expected / len(grams))


def test_a_planted_item_is_found_and_a_clean_one_is_not():
    planted = "Which of the following best describes the function of the mitochondria in eukaryotic cells today"
    clean = "Compute the determinant of the identity matrix of size three by three and explain each step"
    index = ngram_index(CORPUS + [f"some page text before {planted} and some after"], 13)
    hits, fraction = ngram_overlap([planted, clean], index, 13)
    assert fraction[0] == 1.0 and hits[1] == 0 and fraction[1] == 0.0


def test_short_and_empty_items():
    index = ngram_index(CORPUS, 13)
    hits, fraction = ngram_overlap(["the cat sat", "", "trains"], index, 13)
    assert hits.tolist() == [0, 0, 0] and np.isfinite(fraction).all()
    short_index = ngram_index(["the cat sat"], 13)             # a short text is one n-gram of all its words
    assert ngram_overlap(["The cat, sat!"], short_index, 13)[0].tolist() == [1]


def test_windows_cover_a_long_text_with_half_overlap():
    text = " ".join(f"w{i}" for i in range(100))
    windows = word_windows([text, "short text"], 40)
    assert windows[0].split() == [f"w{i}" for i in range(40)] and windows[1].split()[0] == "w20"
    assert windows[-2].split()[-1] == "w99" and windows[-1] == "short text"


def test_minhash_finds_a_copied_window_and_nothing_for_an_unrelated_item():
    rng = np.random.default_rng(0)
    vocabulary = [f"token{i}" for i in range(5000)]
    corpus = [" ".join(rng.choice(vocabulary, 400)) for _ in range(5)]
    windows = word_windows(corpus, 64)
    copied = windows[7].replace(" ", "  ").upper()                 # reformatted: the same words
    unrelated = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"], 64))
    best, where = near_duplicates([copied, unrelated], windows, threshold=0.5)
    assert best[0] == 1.0 and where[0] == 7
    assert best[1] == 0.0 and where[1] == -1
