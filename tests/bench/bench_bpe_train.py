"""Benchmark: BPE training on the Shakespeare corpus (~9.5 MB) at vocab 8,192.

Ours (incremental pair counts, pure Python), ours (naive: recount every pair per merge; on a slice, because the full
corpus would take tens of minutes) and the Hugging Face `tokenizers` BPE trainer (Rust, multi-threaded), in one run.
Goal: ours <= 60 s on 2 cores.

    python tests/bench/bench_bpe_train.py [--vocab 8192] [--naive-slice 50000]
"""
from __future__ import annotations

import argparse
import os
import time

from shared.bpe import ENDOFTEXT, BPETokenizer, count_chunks, train_merges, train_merges_naive
from shared.registry import load


def hf_train(texts: list[str], vocab_size: int):
    """Hugging Face tokenizers: byte-level BPE with the GPT-2 regex, the same special token and vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def hf_merges_as_bytes(tokenizer) -> list[bytes]:
    """HF stores byte-level tokens as printable stand-in characters (GPT-2's bytes_to_unicode); map them back."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + n)] = b
            n += 1
    import json
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [bytes(table[c] for c in a + b) for a, b in pairs]


def timed(fn, *args, **kwargs):
    """Run fn; return (result, wall seconds, CPU seconds of this process, all threads).

    CPU seconds stay meaningful when other jobs share the cores; wall seconds are what a user waits.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--naive-slice", type=int, default=50_000, help="characters of the corpus for the naive run")
    args = parser.parse_args()

    texts = [d.text for d in load("shakespeare", verbose=False)]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    slice_text = "\n".join(texts)[: args.naive_slice]
    slice_mb = len(slice_text.encode("utf-8")) / 1e6
    slice_name = f"first {args.naive_slice:,} chars"
    merges_wanted = args.vocab - 256 - 1
    print(f"corpus: Shakespeare, {len(texts)} documents, {mb:.2f} MB; vocab {args.vocab:,} "
          f"(256 bytes + {merges_wanted:,} merges + {ENDOFTEXT}); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")

    rows = []
    ours, t_ours, c_ours = timed(BPETokenizer.train, texts, args.vocab)
    rows.append(("ours, incremental (pure Python)", "full corpus", mb, t_ours, c_ours))
    _, t_count, _ = timed(count_chunks, texts, special_tokens=[ENDOFTEXT])
    hf, t_hf, c_hf = timed(hf_train, texts, args.vocab)
    rows.append(("Hugging Face tokenizers (Rust)", "full corpus", mb, t_hf, c_hf))

    slice_counts, t_slice_count, c_slice_count = timed(count_chunks, slice_text, special_tokens=[ENDOFTEXT])
    inc_slice, t_inc, c_inc = timed(train_merges, slice_counts, merges_wanted)
    rows.append(("ours, incremental (pure Python)", slice_name, slice_mb, t_slice_count + t_inc, c_slice_count + c_inc))
    naive_slice, t_naive, c_naive = timed(train_merges_naive, slice_counts, merges_wanted)
    rows.append(("ours, naive (pure Python)", slice_name, slice_mb, t_slice_count + t_naive, c_slice_count + c_naive))
    _, t_hf_slice, c_hf_slice = timed(hf_train, [slice_text], args.vocab)
    rows.append(("Hugging Face tokenizers (Rust)", slice_name, slice_mb, t_hf_slice, c_hf_slice))

    print("| trainer | input | MB | wall s | CPU s | MB/s (wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, data, size, seconds, cpu in rows:
        print(f"| {name} | {data} | {size:.2f} | {seconds:.2f} | {cpu:.2f} | {size / seconds:.3f} |")
    print()
    print(f"ours (incremental) full corpus: {t_ours:.1f} s "
          f"({t_count:.1f} s pre-tokenising and counting, {t_ours - t_count:.1f} s merging) "
          f"-> goal <= 60 s: {'met' if t_ours <= 60 else 'NOT met'}")
    print(f"ours vs Hugging Face (full corpus): {t_ours / t_hf:.1f}x the wall time, {c_ours / c_hf:.1f}x the CPU time")
    print(f"naive vs incremental on the slice: identical merges: {naive_slice == inc_slice} "
          f"({len(inc_slice):,} merges: the slice runs out of pairs before {merges_wanted:,}); merging alone "
          f"{t_naive / t_inc:.0f}x slower ({t_naive:.1f} s vs {t_inc:.2f} s)")

    hf_tokens = hf_merges_as_bytes(hf)
    our_tokens = ours.vocab[256:]
    shared_tokens = len(set(hf_tokens) & set(our_tokens))
    same_prefix = next((i for i, (a, b) in enumerate(zip(our_tokens, hf_tokens)) if a != b), len(our_tokens))
    print(f"ours vs Hugging Face tokens: {len(our_tokens):,} vs {len(hf_tokens):,} merges; {shared_tokens:,} learned "
          f"tokens in common; the first {same_prefix:,} merges are identical in order")
    text = "\n".join(texts)
    ours_len = len(ours.to_tiktoken().encode_ordinary(text))
    hf_len = sum(len(e.ids) for e in hf.encode_batch(texts))
    print(f"tokens for the whole corpus: ours {ours_len:,}, Hugging Face {hf_len:,} "
          f"({hf_len / ours_len - 1:+.2%})")


if __name__ == "__main__":
    main()
