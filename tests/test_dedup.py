"""Deduplication (shared/dedup.py, notebook ch02_data/03_dedup): exact, MinHash + LSH, suffix arrays.

References: brute force (sorted suffixes, all n-grams), exact Jaccard of Python sets, datasketch's choice of
bands and rows, and the binomial law of MinHash estimates and LSH candidate rates.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import dedup
from shared.dedup import (LSHIndex, MinHasher, candidate_probability, concat_with_separators, content_hash,
                          deduplicate_documents, estimate_jaccard, exact_dedup, exact_jaccard_pairs, jaccard,
                          lcp_array, line_dedup, near_duplicate_pairs, ngrams, optimal_bands_rows,
                          precision_recall, repeated_substrings, repeated_substrings_naive, shingles, suffix_array,
                          words)
from shared.registry import Document, gpt2_encoding, load


@pytest.fixture(scope="module")
def plays():
    return {d.id: d.text for d in load("shakespeare")}


# ---------------------------------------------------------------- suffix arrays


def test_banana():
    assert suffix_array("banana").tolist() == [5, 3, 1, 0, 4, 2]
    assert lcp_array("banana").tolist() == [0, 1, 3, 0, 0, 2]
    assert suffix_array(b"banana").tolist() == [5, 3, 1, 0, 4, 2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=60))
def test_suffix_and_lcp_arrays_equal_brute_force(xs):
    sa = suffix_array(np.array(xs, dtype=np.int64))
    assert sa.tolist() == sorted(range(len(xs)), key=lambda i: xs[i:])
    lcp = lcp_array(np.array(xs, dtype=np.int64), sa)
    for i in range(1, len(xs)):
        a, b = xs[sa[i - 1]:], xs[sa[i]:]
        common = next((k for k, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
        assert lcp[i] == common


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=80), st.integers(1, 6))
def test_repeated_substrings_equal_brute_force_random(xs, min_len):
    assert repeated_substrings(xs, min_len) == repeated_substrings_naive(xs, min_len)


def test_repeated_substrings_equal_brute_force_on_real_tokens(plays):
    tokens = gpt2_encoding().encode_ordinary(plays["macbeth_gut"])[:6000]
    for min_len in (3, 8, 20, 50):
        spans = repeated_substrings(tokens, min_len)
        assert spans == repeated_substrings_naive(tokens, min_len)
        if min_len <= 8:
            assert spans, "Macbeth repeats speaker names and stage directions: there must be repeated spans"


def test_repeats_never_cross_document_boundaries():
    shared_text = list(range(100, 130))
    docs = [[1, 2, 3] + shared_text[:15], shared_text[15:] + [4, 5], [7] + shared_text + [8]]
    seq, starts = concat_with_separators(docs)
    assert starts.tolist() == [0, 19, 37]
    spans = repeated_substrings(seq, 10)
    # doc 2 contains the 30 shared tokens; doc 0 has the first 15 and doc 1 the last 15; nothing spans 0|1
    covered = {i for s, e in spans for i in range(s, e)}
    assert covered == set(range(3, 18)) | set(range(19, 34)) | set(range(38, 68))
    assert spans == repeated_substrings_naive(seq, 10)


def test_suffix_array_rejects_bad_input():
    with pytest.raises(TypeError, match="1-D sequence of integers"):
        suffix_array(np.array([0.5, 1.5]))
    with pytest.raises(TypeError):
        suffix_array(np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="min_len"):
        repeated_substrings([1, 2, 1, 2], 0)
    assert suffix_array([]).tolist() == [] and repeated_substrings([], 3) == []


# ---------------------------------------------------------------- exact dedup


def test_exact_dedup_normalises_case_whitespace_punctuation_digits(plays):
    hamlet = plays["hamlet_gut"][:5000] + "\n(First printed in 1603.)"
    copies = [hamlet, " ".join(hamlet.split()), hamlet.upper().replace("'", "\u2019"), hamlet.replace("1603", "1604"),
              plays["macbeth_gut"][:5000]]
    keep, duplicate_of = exact_dedup(copies)
    assert keep == [0, 4] and duplicate_of == {1: 0, 2: 0, 3: 0}
    keep_raw, _ = exact_dedup(copies, normalize=False)
    assert keep_raw == [0, 1, 2, 3, 4]
    assert content_hash("Hello,  World!") == content_hash("hello world") != content_hash("Hello,  World!", False)


def test_line_dedup_keeps_first_copy_and_short_lines():
    texts = ["Copyright (c) 2020 The Authors\n\nreal text one\n---", "Copyright (C) 2021 the authors.\n---\nreal two"]
    out, dropped = line_dedup(texts, min_chars=5)
    assert out == ["Copyright (c) 2020 The Authors\n\nreal text one\n---", "---\nreal two"]
    assert dropped == 1


# ---------------------------------------------------------------- shingles and exact Jaccard


def test_words_ngrams_shingles_jaccard():
    assert words("It's 2 o'clock, Über-cool_stuff!") == ["it", "s", "2", "o", "clock", "über", "cool_stuff"]
    assert ngrams([1, 2, 3, 4], 2) == [(1, 2), (2, 3), (3, 4)] and ngrams([1], 2) == []
    assert shingles("a b c", 5) == {"a b c"} and shingles("", 5) == set()
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 1.0
    with pytest.raises(ValueError):
        ngrams([1, 2], 0)


def test_shingle_hashes_are_exactly_the_python_shingle_sets(plays):
    texts = [plays["hamlet_gut"], plays["hamlet_gut_f"], plays["sonnets_gut"][:3000],
             "Ünïcödé wörds — “quoted” it’s here", "one two", "", "   ", "x " * 12]
    hasher = MinHasher(ngram=5)
    hashes, counts = hasher.shingle_hashes(texts)
    offsets = np.cumsum(counts) - counts
    sets = [shingles(t) for t in texts]
    for text, s, o, c in zip(texts, sets, offsets, counts):
        assert len(np.unique(hashes[o:o + c])) == len(s), text[:40]
    pairs, exact = exact_jaccard_pairs(hashes, counts)
    for (i, j), value in zip(pairs.tolist(), exact):
        assert value == pytest.approx(jaccard(sets[i], sets[j]), abs=1e-12)
    # every pair that shares a shingle is reported
    sharing = {(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)) if sets[i] & sets[j]}
    assert set(map(tuple, pairs.tolist())) == sharing


def test_ascii_fast_path_gives_the_same_words_as_the_regex():
    text = "Hello, World! snake_case 42x A-B\ttab\nnew\x00line ~tilde~ [x](y)"
    assert text.isascii()
    assert dedup._word_string(text).split() == [w.encode() for w in words(text)]


# ---------------------------------------------------------------- MinHash


def _pairs_with_jaccard(s, size, count, rng):
    c = int(round(2 * size * s / (1 + s)))
    a = rng.integers(0, 2**63, size=(count, size), dtype=np.uint64)
    b = np.concatenate([a[:, :c], rng.integers(0, 2**63, size=(count, size - c), dtype=np.uint64)], axis=1)
    return np.stack([a, b], axis=1).reshape(-1), np.full(2 * count, size), c / (2 * size - c)


def test_minhash_estimate_converges_to_the_true_jaccard():
    rng = np.random.default_rng(0)
    for s in (0.1, 0.5, 0.9):
        hashes, counts, true = _pairs_with_jaccard(s, 150, 300, rng)
        errors = []
        for k in (16, 64, 256, 1024):
            sig = MinHasher(num_perm=k, seed=3).hash_sets(hashes, counts)
            est = estimate_jaccard(sig[0::2], sig[1::2])
            sd = np.sqrt(true * (1 - true) / k)
            # unbiased: the mean over 300 pairs is within 4 standard errors; spread matches the binomial law
            assert abs(est.mean() - true) < 4 * sd / np.sqrt(300) + 1e-9, (s, k)
            assert 0.75 * sd < est.std() < 1.25 * sd, (s, k, est.std(), sd)
            errors.append(np.abs(est - true).mean())
        assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_minhash_on_real_edition_pairs(plays):
    ids = ["hamlet_gut", "hamlet_gut_f", "macbeth_gut", "macbeth_gut_f"]
    texts = [plays[i] for i in ids]
    sig = MinHasher(num_perm=1024, seed=5).signatures(texts)
    for a, b in [(0, 1), (2, 3), (0, 2)]:
        true = jaccard(shingles(texts[a]), shingles(texts[b]))
        sd = np.sqrt(true * (1 - true) / 1024)
        assert abs(estimate_jaccard(sig[a], sig[b]) - true) < 4 * sd + 1e-3


def test_minhash_handles_structured_inputs_and_empty_sets():
    # consecutive integers are mixed by fmix64 before the permutations
    hashes = np.concatenate([np.arange(1000), np.arange(500, 1500)]).astype(np.uint64)
    sig = MinHasher(num_perm=2048, seed=0).hash_sets(hashes, [1000, 1000])
    assert abs(estimate_jaccard(sig[0], sig[1]) - 1 / 3) < 4 * np.sqrt(2 / 9 / 2048)
    sig = MinHasher(num_perm=8).signatures(["", "some words here", ""])
    assert (sig[0] == np.iinfo(np.uint32).max).all() and (sig[0] == sig[2]).all()
    with pytest.raises(ValueError, match="counts"):
        MinHasher().hash_sets(np.arange(3, dtype=np.uint64), [1, 1])
    with pytest.raises(ValueError, match="num_perm"):
        MinHasher(num_perm=0)


def test_signatures_do_not_depend_on_chunking(plays):
    texts = [plays["tempest_gut"], "short text", plays["tempest_gut_f"][:20000]]
    reference = MinHasher(num_perm=32, seed=1).signatures(texts)
    small = MinHasher(num_perm=32, seed=1, chunk_rows=7, chunk_bytes=1000).signatures(texts)
    assert (reference == small).all()


# ---------------------------------------------------------------- LSH


@pytest.mark.parametrize("threshold,num_perm", [(0.1, 256), (0.3, 128), (0.5, 128), (0.8, 128), (0.9, 64)])
def test_bands_rows_match_datasketch(threshold, num_perm):
    from datasketch.lsh import _optimal_param
    assert optimal_bands_rows(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_optimal_bands_rows_rejects_bad_thresholds():
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="threshold"):
            optimal_bands_rows(bad, 128)


def test_lsh_candidate_rate_follows_the_s_curve():
    """Measured candidate rates over 400 pairs per similarity are within 4 binomial standard errors (+0.01)
    of 1 - (1 - s^r)^b."""
    rng = np.random.default_rng(1)
    hasher = MinHasher(num_perm=128, seed=7)
    for threshold in (0.3, 0.5, 0.8):
        b, r = optimal_bands_rows(threshold, 128)
        for s in (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            hashes, counts, true = _pairs_with_jaccard(s, 200, 400, rng)
            found = {tuple(p) for p in LSHIndex(b, r).add(hasher.hash_sets(hashes, counts)).candidate_pairs().tolist()}
            rate = np.mean([(2 * q, 2 * q + 1) in found for q in range(400)])
            p = candidate_probability(true, b, r)
            assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / 400) + 0.01, (threshold, s, rate, p)


def test_candidate_pairs_equal_brute_force_and_query():
    rng = np.random.default_rng(2)
    sig = rng.integers(0, 3, size=(60, 12), dtype=np.uint32)      # small alphabet: many collisions
    index = LSHIndex(4, 3).add(sig)
    keys = index.keys
    brute = sorted((i, j) for i in range(60) for j in range(i + 1, 60) if (keys[i] == keys[j]).any())
    assert index.candidate_pairs().tolist() == [list(p) for p in brute]
    for q in (0, 17, 59):
        expected = [j for j in range(60) if (keys[j] == keys[q]).any()]
        assert index.query(sig[q]).tolist() == expected
    with pytest.raises(ValueError, match="signatures"):
        LSHIndex(5, 3).add(sig)


def test_near_duplicates_of_real_documents_are_found_at_the_stated_threshold(plays):
    """Shakespeare's modern and First-Folio editions of 35 plays: exact 5-gram Jaccard 0.13-0.19, every other
    pair below 0.01. At threshold 0.1 with 256 permutations and recall-weighted bands x rows, LSH + estimate
    verification finds all of them and nothing else."""
    ids = sorted(plays)
    texts = [plays[i] for i in ids]
    hasher = MinHasher(num_perm=256, seed=0)
    hashes, counts = hasher.shingle_hashes(texts)
    pairs, exact = exact_jaccard_pairs(hashes, counts)
    truth = pairs[exact >= 0.1]
    assert len(truth) == 35
    assert all(ids[i].endswith("_f") != ids[j].endswith("_f") for i, j in truth)    # one spelling of each
    b, r = optimal_bands_rows(0.1, 256, fp_weight=0.05, fn_weight=0.95)
    found, estimates = near_duplicate_pairs(hasher.hash_sets(hashes, counts), 0.1, b, r)
    precision, recall = precision_recall(found, truth)
    assert precision == 1.0 and recall == 1.0


def test_deduplicate_documents_drops_copies_and_near_copies(plays):
    base = plays["othello_gut"][:20000]
    near = base.replace("Othello", "Otello", 3) + "\nA line added at the end."
    docs = [Document("a", base), Document("b", plays["tempest_gut"][:20000]), Document("a-copy", base.upper()),
            Document("a-near", near), Document("c", plays["lear_gut"][:20000])]
    kept = deduplicate_documents(docs, threshold=0.8)
    assert [d.id for d in kept] == ["a", "b", "c"]
