"""Chapter 2's data pipeline as a command: a registry source -> (cleaning, dedup) -> tokenizer -> token shards.

    python ch02_data/prepare_data.py                                   # Shakespeare, GPT-2 tokenizer (laptop)
    python ch02_data/prepare_data.py --source web_text --tokenizer my-bpe.json --shard-tokens 100000000
    python ch02_data/prepare_data.py --source shakespeare --dedup --dedup-threshold 0.1   # one edition per play

The output folder holds {train,val}_NNNNNN.bin shards (uint16/uint32 token ids, each document preceded by
<|endoftext|>), one JSON sidecar per shard, and manifest.json, written last: a folder without a manifest is
incomplete. Interrupt it at any point and run the same command again: complete shards are kept, the rest is
rewritten, and the result is byte-identical to an uninterrupted run. The folder is claimed by prepare.json, written
first: the script never deletes or replaces a file it did not write, and refuses a non-empty folder it did not
create. Read it with
shared.batches.BlockLoader(OUT, block_size, batch_size, rank=..., world_size=...).
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path

from shared.files import FileFormatError, atomic_write, is_temporary, read_versioned_json, write_versioned_json
from shared.registry import REGISTRY, Document, SourceUnavailable, UnknownSource, load

STATE = "prepare.json"          # the settings of the run that owns the folder (written first)
STATE_FORMAT = "llm-book-prepare"
MANIFEST = "manifest.json"      # shared.batches.MANIFEST (torch is imported only once --help has been handled)
# Exactly the names this script writes; anything else in --out belongs to someone else and is never touched.
OUR_NAMES = re.compile(r"(prepare|manifest|tokenizer)\.json|(train|val)_\d{6}\.(bin|json)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="shakespeare",
                   help=f"registry source of documents (default: shakespeare; e.g. {', '.join(_text_sources())})")
    p.add_argument("--tokenizer", default="gpt2",
                   help='"gpt2" (tiktoken, built offline) or a BPE file saved by BPETokenizer.save (default: gpt2)')
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: runs/data/<source>-<tokenizer>)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of documents held out for validation, chosen by a hash of their ids (default 0.05)")
    p.add_argument("--shard-tokens", type=int, default=1_000_000,
                   help="tokens per shard (default 1,000,000 for a laptop; ~100,000,000 for real corpora)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    p.add_argument("--max-docs", type=int, default=None, help="use only the first N documents (quick runs)")
    p.add_argument("--clean", action="store_true", help="apply the cleaning pipeline of notebook 02 first")
    p.add_argument("--dedup", action="store_true", help="drop exact and near-duplicate documents (notebook 03)")
    p.add_argument("--dedup-threshold", type=float, default=0.8,
                   help="estimated Jaccard of word 5-grams above which two documents are near-duplicates "
                        "(default 0.8 for web pages; 0.1 for the two editions of a Shakespeare play)")
    p.add_argument("--threads", type=int, default=4, help="tokenizer threads (default 4)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset prepared with other settings in --out (otherwise refused)")
    return p.parse_args(argv)


def _text_sources() -> list[str]:
    return [name for name in ("shakespeare", "web_text", "python_source") if name in REGISTRY]


def _clean(docs: list[Document]) -> list[Document]:
    try:
        from shared.cleaning import clean_documents
    except ImportError as e:
        raise SystemExit(f"--clean needs shared/cleaning.py with clean_documents() (notebook 02): {e}") from None
    return list(clean_documents(docs))


def _dedup(docs: list[Document], threshold: float) -> list[Document]:
    try:
        from shared.dedup import deduplicate_documents
    except ImportError as e:
        raise SystemExit(f"--dedup needs shared/dedup.py with deduplicate_documents() (notebook 03): {e}") from None
    return list(deduplicate_documents(docs, threshold=threshold, num_perm=256))   # notebook 03: 256 for low thresholds


def _tokenizer_id(spec: str) -> str:
    """What identifies the tokenizer's ids: its name for gpt2, the content hash of a BPE file."""
    if spec == "gpt2":
        return "gpt2"
    return "bpe-sha256:" + hashlib.sha256(Path(spec).read_bytes()).hexdigest()[:16]


def _ours(path: Path) -> bool:
    """A name this script writes (or a leftover temporary file of one of its atomic writes)."""
    return bool(OUR_NAMES.fullmatch(path.name)) or (is_temporary(path) and bool(OUR_NAMES.fullmatch(
        path.name[1:].split(".tmp")[0].rsplit(".", 1)[0])))


def _check_out(out: Path) -> None:
    """--out must be a folder this user can write to: one clear line otherwise."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out}: is a file, not a folder; choose a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = atomic_write(out / ".prepare-write-check.tmp", b"")       # can we create files in it?
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot write there ({e.strerror or type(e).__name__}); choose another folder")


def _claim_folder(out: Path, state: dict, overwrite: bool) -> None:
    """Make `out` ours and ready for this dataset. Only files with our own names are ever deleted, and only in a
    folder that prepare.json marks as ours (or, with --overwrite, one that holds nothing but such files)."""
    entries = sorted(out.iterdir())
    foreign = [p.name for p in entries if not _ours(p)]
    if foreign:
        raise SystemExit(f"{out} holds files that prepare_data.py did not write ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); nothing was changed: choose another --out")
    state_path = out / STATE
    if entries and not state_path.exists() and not overwrite:
        raise SystemExit(f"{out} is not empty ({', '.join(p.name for p in entries[:5])}) and has no {STATE}, so "
                         f"prepare_data.py did not prepare it; nothing was changed: use --overwrite to replace it, "
                         f"or another --out")
    old = None
    if state_path.exists():
        try:
            old = read_versioned_json(state_path, STATE_FORMAT, 1, kind="dataset settings file")
        except FileFormatError as e:
            if not overwrite:
                raise SystemExit(f"{e}; nothing was changed: use --overwrite to replace the dataset") from None
    if old is not None and old.get("fingerprint") != state["fingerprint"]:
        if not overwrite:
            changed = sorted(k for k in state["settings"] if old.get("settings", {}).get(k) != state["settings"][k])
            raise SystemExit(f"{out} holds a dataset prepared with other settings (differences: "
                             f"{', '.join(changed)}); use --overwrite to replace it, or another --out")
        old = None
    if old is None:
        for path in entries:                                   # every one of them has one of our names
            path.unlink()
        write_versioned_json(state_path, STATE_FORMAT, 1, state)


def _complete(out: Path, fp: str) -> dict | None:
    """The manifest if the folder already holds this complete dataset (every shard present and whole)."""
    from shared.batches import ShardError, read_manifest, read_shard_meta
    try:
        manifest = read_manifest(out)
        if manifest.get("fingerprint") != fp:
            return None
        for split in manifest["splits"].values():
            for name in split["shards"]:
                read_shard_meta(out / name)
        return manifest
    except (ShardError, FileFormatError, KeyError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from shared.batches import fingerprint, split_documents, write_manifest, write_token_shards
    from shared.bpe import ENDOFTEXT, TokenizerFileError, get_encoding
    if not 0 <= args.val_fraction < 1:
        raise SystemExit(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.shard_tokens < 1:
        raise SystemExit(f"--shard-tokens must be positive, got {args.shard_tokens}")
    if not 0 < args.dedup_threshold <= 1:
        raise SystemExit(f"--dedup-threshold must be in (0, 1], got {args.dedup_threshold}")
    try:
        encoding = get_encoding(args.tokenizer)
    except TokenizerFileError as e:
        raise SystemExit(f"--tokenizer: {e}") from None
    if ENDOFTEXT not in encoding.special_tokens_set:
        raise SystemExit(f"--tokenizer {args.tokenizer}: it has no {ENDOFTEXT} token to separate documents; "
                         f"train it with special_tokens=['{ENDOFTEXT}']")
    tokenizer_name = "gpt2" if args.tokenizer == "gpt2" else Path(args.tokenizer).stem
    out = args.out or Path("runs") / "data" / f"{args.source}-{tokenizer_name}"
    _check_out(out)

    try:
        docs = load(args.source)
    except (UnknownSource, SourceUnavailable) as e:
        raise SystemExit(f"--source: {e}") from None
    if not docs or not isinstance(docs[0], Document):
        raise SystemExit(f"source {args.source!r} does not hold text documents; try one of {_text_sources()}")
    docs = docs[: args.max_docs] if args.max_docs else docs
    if args.clean:
        before = len(docs)
        docs = _clean(docs)
        print(f"cleaning kept {len(docs):,} of {before:,} documents")
    if args.dedup:
        before = len(docs)
        docs = _dedup(docs, args.dedup_threshold)
        print(f"deduplication kept {len(docs):,} of {before:,} documents")
    if not docs:
        raise SystemExit("no documents left to tokenise")

    content = hashlib.sha256()
    for d in docs:
        content.update(f"{len(d.id)}:{d.id}{len(d.text)}:".encode("utf-8") + d.text.encode("utf-8"))
    settings = {"source": args.source, "documents": len(docs), "content_sha256": content.hexdigest()[:16],
                "tokenizer": _tokenizer_id(args.tokenizer), "shard_tokens": args.shard_tokens,
                "val_fraction": args.val_fraction, "seed": args.seed, "clean": args.clean, "dedup": args.dedup}
    if args.dedup:
        settings["dedup_threshold"] = args.dedup_threshold
    fp = fingerprint(settings)
    if (manifest := _complete(out, fp)) is not None:
        sizes = ", ".join(f"{k}: {v['n_tokens']:,} tokens" for k, v in manifest["splits"].items())
        print(f"{out}: already complete ({sizes}); nothing to do")
        return 0
    try:
        train_idx, val_idx = split_documents([d.id for d in docs], args.val_fraction, args.seed)
    except ValueError as e:
        raise SystemExit(f"--val-fraction: {e} (source {args.source!r}); use --val-fraction 0, or a source with "
                         f"more documents") from None
    _claim_folder(out, {"fingerprint": fp, "settings": settings}, args.overwrite)
    (out / MANIFEST).unlink(missing_ok=True)
    if args.tokenizer != "gpt2":        # keep the tokenizer with its data (the ids mean nothing without it)
        atomic_write(out / "tokenizer.json", Path(args.tokenizer).read_bytes())

    start = time.perf_counter()
    splits = {}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        if not idx:
            continue
        splits[split] = write_token_shards(
            out, split, [docs[i].text for i in idx],
            lambda texts: encoding.encode_ordinary_batch(texts, num_threads=args.threads),
            eot=encoding.eot_token, vocab_size=encoding.n_vocab, tokenizer=settings["tokenizer"],
            shard_tokens=args.shard_tokens, fingerprint=fingerprint(fp, split), progress=True)
    manifest = write_manifest(out, splits, fingerprint=fp, tokenizer=settings["tokenizer"],
                              vocab_size=encoding.n_vocab, eot=encoding.eot_token, settings=settings,
                              documents={"train": len(train_idx), "val": len(val_idx)})
    seconds = time.perf_counter() - start
    for split, info in manifest["splits"].items():
        print(f"{split:5s}: {info['n_tokens']:>12,} tokens in {len(info['shards'])} shards")
    print(f"wrote {out} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
