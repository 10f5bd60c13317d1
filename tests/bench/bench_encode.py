"""Benchmark: encoding speed in MB/s, one thread.

Ours (pure Python, with its chunk cache, cold and warm), our tokenizer exported to tiktoken, and tiktoken's own
`gpt2` (shared.registry.gpt2_encoding), on Shakespeare (~9.5 MB) and the web-text sample, for GPT-2's merges and for
a tokenizer trained on Shakespeare (8,192 tokens). Goal: the export within 1.2x of tiktoken gpt2.

    python tests/bench/bench_encode.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import time

from shared.bpe import BPETokenizer, gpt2_tokenizer
from shared.registry import gpt2_encoding, load


def seconds(fn, text: str) -> tuple[float, list[int]]:
    start = time.perf_counter()
    ids = fn(text)
    return time.perf_counter() - start, ids


def best_interleaved(fns: dict, text: str, repeat: int) -> dict[str, tuple[float, list[int]]]:
    """Best of `repeat` runs of each encoder, taking turns, so that load from other jobs hits them alike."""
    best = {name: (float("inf"), None) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t, ids = seconds(fn, text)
            if t < best[name][0]:
                best[name] = (t, ids)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per tiktoken encoder (the best is kept)")
    args = parser.parse_args()

    docs = [d.text for d in load("shakespeare", verbose=False)]
    corpora = {"shakespeare": "\n".join(docs), "web_text": "\n".join(d.text for d in load("web_text", verbose=False))}
    tiktoken_gpt2 = gpt2_encoding()
    ours_gpt2 = gpt2_tokenizer()
    trained = BPETokenizer.train(docs, vocab_size=8192, name="shakespeare-8k")
    exports = {"GPT-2 merges": ours_gpt2.to_tiktoken(), "Shakespeare 8K": trained.to_tiktoken()}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; one thread per encoder\n")

    print("| text | MB | encoder | vocab | MB/s | speed vs tiktoken gpt2 | same ids as our Python encoder |")
    print("|---|---:|---|---|---:|---:|---|")
    summary = []
    for name, text in corpora.items():
        mb = len(text.encode("utf-8")) / 1e6
        fast = best_interleaved({"tiktoken gpt2": tiktoken_gpt2.encode_ordinary,
                                 **{label: enc.encode_ordinary for label, enc in exports.items()}}, text, args.repeat)
        t_ref, ref_ids = fast["tiktoken gpt2"]
        for label, tok in (("GPT-2 merges", ours_gpt2), ("Shakespeare 8K", trained)):
            tok._cache.clear()
            t_cold, ours_ids = seconds(tok.encode_ordinary, text)
            t_warm, _ = seconds(tok.encode_ordinary, text)
            t_export, export_ids = fast[label]
            for enc_name, t, same in (("ours, Python (cold cache)", t_cold, "-"),
                                      ("ours, Python (warm cache)", t_warm, "-"),
                                      ("ours exported to tiktoken", t_export, export_ids == ours_ids)):
                print(f"| {name} | {mb:.2f} | {enc_name} | {label} | {mb / t:.2f} | {t_ref / t:.2f}x | {same} |")
            if label == "GPT-2 merges":
                summary.append((name, t_export / t_ref, ours_ids == ref_ids))
        print(f"| {name} | {mb:.2f} | tiktoken gpt2 | GPT-2 | {mb / t_ref:.2f} | 1.00x | "
              f"{ref_ids == ours_gpt2.encode_ordinary(text)} |")
    print()
    for name, ratio, equal in summary:
        print(f"{name}: the export of GPT-2's merges takes {ratio:.2f}x the time of tiktoken gpt2 "
              f"(goal <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'}); our Python ids == tiktoken ids: {equal}")


if __name__ == "__main__":
    main()
