"""Benchmark: MinHash signatures per second, ours (shared.dedup.MinHasher) against datasketch, same documents.

Both compute signatures of the same sets (word 5-gram shingles, `shared.dedup.shingles`) with the same number of
permutations. Ours starts from the texts (tokenising, hashing and shingling included); datasketch is timed twice:
end to end (our `shingles` + `MinHash.bulk`, its fastest documented path) and hashing only (shingles prepared
in advance, not timed). Agreement: over all pairs of documents of a corpus, the mean absolute difference between
the two Jaccard estimates, and each estimate's mean absolute error against the exact Jaccard. Goal: ours at least
as fast as datasketch.

    python tests/bench/bench_minhash.py [--num-perm 128] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from datasketch import MinHash

from shared.dedup import MinHasher, estimate_jaccard, exact_jaccard_pairs, shingles
from shared.registry import load
from shared.sources import as_text


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def datasketch_signatures(texts: list[str], num_perm: int) -> np.ndarray:
    encoded = [[s.encode("utf-8") for s in shingles(t)] for t in texts]
    return np.array([m.hashvalues for m in MinHash.bulk(encoded, num_perm=num_perm)])


def agreement(ours: np.ndarray, theirs: np.ndarray, hasher: MinHasher, texts: list[str]) -> dict[str, float]:
    n = len(texts)
    if n * (n - 1) // 2 <= 200_000:
        i, j = np.triu_indices(n, 1)
    else:                                                 # a fixed random sample of pairs for large corpora
        i, j = np.random.default_rng(0).integers(0, n, size=(2, 200_000))
        i, j = np.minimum(i, j)[i != j], np.maximum(i, j)[i != j]
    pairs, values = exact_jaccard_pairs(*hasher.shingle_hashes(texts))
    codes, query = pairs[:, 0] * n + pairs[:, 1], i * n + j          # codes are sorted
    at = np.minimum(np.searchsorted(codes, query), max(len(codes) - 1, 0))
    truth = np.where(codes[at] == query, values[at], 0.0) if len(codes) else np.zeros(len(query))
    est_ours, est_theirs = estimate_jaccard(ours[i], ours[j]), estimate_jaccard(theirs[i], theirs[j])
    similar = truth >= 0.1
    return {"pairs": len(i), "similar": int(similar.sum()),
            "ours_vs_ds": float(np.abs(est_ours - est_theirs).mean()),
            "ours_err": float(np.abs(est_ours - truth).mean()), "ds_err": float(np.abs(est_theirs - truth).mean()),
            "ours_err_sim": float(np.abs(est_ours - truth)[similar].mean()) if similar.any() else float("nan"),
            "ds_err_sim": float(np.abs(est_theirs - truth)[similar].mean()) if similar.any() else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per measurement")
    args = parser.parse_args()

    corpora = {
        "web_text": [d.text for d in load("web_text", verbose=False)],
        "shakespeare": [d.text for d in load("shakespeare", verbose=False)],
        "mmlu": [as_text(q) for q in load("mmlu", verbose=False)],
    }
    hasher = MinHasher(num_perm=args.num_perm, ngram=5, seed=0)
    print(f"MinHash signatures, {args.num_perm} permutations, word 5-gram shingles, best of {args.repeat}\n")
    head = (f"{'corpus':12s} {'docs':>6s} {'MB':>6s} {'shingles':>10s} | {'ours s':>7s} {'sigs/s':>8s} | "
            f"{'datasketch s':>12s} {'sigs/s':>8s} | {'ds hash-only s':>14s} | {'speed-up':>8s} {'vs hash-only':>12s}")
    print(head)
    print("-" * len(head))
    results = {}
    for name, texts in corpora.items():
        n_shingles = int(hasher.shingle_hashes(texts)[1].sum())
        t_ours, ours = best_of(args.repeat, lambda: hasher.signatures(texts))
        t_ds, theirs = best_of(args.repeat, lambda: datasketch_signatures(texts, args.num_perm))
        encoded = [[s.encode("utf-8") for s in shingles(t)] for t in texts]
        t_hash, _ = best_of(args.repeat, lambda: MinHash.bulk(encoded, num_perm=args.num_perm))
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"{name:12s} {len(texts):6d} {mb:6.2f} {n_shingles:10,d} | {t_ours:7.2f} {len(texts) / t_ours:8.0f} | "
              f"{t_ds:12.2f} {len(texts) / t_ds:8.0f} | {t_hash:14.2f} | "
              f"{t_ds / t_ours:7.1f}x {t_hash / t_ours:11.1f}x")
        results[name] = (ours, theirs, texts)

    print("\nJaccard estimates on pairs of documents (exact Jaccard from the shingle sets)")
    head = (f"{'corpus':12s} {'pairs':>8s} {'J>=0.1':>7s} | {'|ours - ds|':>11s} | {'|ours - exact|':>14s} "
            f"{'|ds - exact|':>12s} | {'J>=0.1 only: ours':>18s} {'ds':>7s}")
    print(head)
    print("-" * len(head))
    for name, (ours, theirs, texts) in results.items():
        a = agreement(ours, theirs, hasher, texts)
        print(f"{name:12s} {a['pairs']:8,d} {a['similar']:7d} | {a['ours_vs_ds']:11.4f} | {a['ours_err']:14.4f} "
              f"{a['ds_err']:12.4f} | {a['ours_err_sim']:18.4f} {a['ds_err_sim']:7.4f}")


if __name__ == "__main__":
    main()
