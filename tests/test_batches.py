"""Tests for shared/batches.py (from ch02_data/06_batches.ipynb) and the chapter script ch02_data/prepare_data.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.batches import (BlockLoader, ShardError, open_shard, open_split, read_manifest,
                            read_shard_meta, shard_name, split_documents, token_dtype, write_manifest, write_shard,
                            write_token_shards)
from shared.registry import gpt2_encoding, load

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ch02_data" / "prepare_data.py"


@pytest.fixture(scope="module")
def docs():
    return load("shakespeare", verbose=False)


@pytest.fixture(scope="module")
def encoding():
    return gpt2_encoding()


def _settings(encoding, shard_tokens):
    return dict(encode_batch=encoding.encode_ordinary_batch, eot=encoding.eot_token, vocab_size=encoding.n_vocab,
                tokenizer="gpt2", shard_tokens=shard_tokens)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- shards


def test_token_dtype_boundaries():
    assert token_dtype(50257) == np.dtype("<u2") and token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4") and token_dtype(200_000) == np.dtype("<u4")
    with pytest.raises(ValueError):
        token_dtype(0)


def test_write_and_open_shard(tmp_path):
    ids = np.array([0, 1, 65535, 42])
    meta = write_shard(tmp_path / "a.bin", ids, vocab_size=65536, tokenizer="t", split="train")
    assert meta["n_tokens"] == 4 and meta["dtype"] == "<u2" and meta["split"] == "train"
    assert (tmp_path / "a.bin").stat().st_size == 8
    assert open_shard(tmp_path / "a.bin", verify=True).tolist() == ids.tolist()
    big = write_shard(tmp_path / "b.bin", [70000, 3], vocab_size=100277, tokenizer="t")
    assert big["dtype"] == "<u4" and open_shard(tmp_path / "b.bin").tolist() == [70000, 3]
    assert not list(tmp_path.glob("*.tmp"))


def test_write_shard_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="in \\[0, 100\\)"):
        write_shard(tmp_path / "a.bin", [5, 100], vocab_size=100, tokenizer="t")
    with pytest.raises(ValueError, match="non-empty 1-D"):
        write_shard(tmp_path / "a.bin", [], vocab_size=100, tokenizer="t")
    with pytest.raises(ValueError, match=".bin"):
        write_shard(tmp_path / "a.npy", [1], vocab_size=100, tokenizer="t")


@pytest.mark.parametrize("crash_on", [".bin", ".json"])
def test_interrupted_shard_write_never_looks_complete(tmp_path, monkeypatch, crash_on):
    path = tmp_path / "s.bin"
    write_shard(path, [1, 2, 3], vocab_size=10, tokenizer="t")          # an older complete version
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(crash_on):
            raise RuntimeError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(RuntimeError, match="killed"):
        write_shard(path, [4, 5, 6, 7], vocab_size=10, tokenizer="t")
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(ShardError, match="incomplete"):
        read_shard_meta(path)


def test_corrupt_shards_are_detected(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100), vocab_size=1000, tokenizer="t")
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ShardError, match="promises"):
        open_shard(path)
    write_shard(path, np.arange(100), vocab_size=1000, tokenizer="t")
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    open_shard(path)                                                   # the size is right ...
    with pytest.raises(ShardError, match="checksum"):                  # ... the content is not
        open_shard(path, verify=True)
    path.with_suffix(".json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ShardError, match="corrupt sidecar"):
        open_shard(path)
    path.with_suffix(".json").write_text(json.dumps({"format": "other"}), encoding="utf-8")
    with pytest.raises(ShardError, match="not a llm-book-shard sidecar"):
        open_shard(path)


# ---------------------------------------------------------------- split


def test_split_documents_is_deterministic_disjoint_and_order_free():
    ids = [f"doc{i}" for i in range(100)]
    train, val = split_documents(ids, 0.1, seed=3)
    assert len(val) == 10 and sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert split_documents(ids, 0.1, seed=3) == (train, val)
    reversed_ids = ids[::-1]
    _, val_rev = split_documents(reversed_ids, 0.1, seed=3)
    assert {reversed_ids[i] for i in val_rev} == {ids[i] for i in val}
    assert split_documents(ids, 0.1, seed=4)[1] != val
    assert len(split_documents(ids[:3], 0.01)[1]) == 1                 # any positive fraction holds out >= 1
    assert split_documents(ids, 0.0) == (list(range(100)), [])
    with pytest.raises(ValueError, match="unique"):
        split_documents(["a", "a"], 0.5)
    with pytest.raises(ValueError, match="no training documents"):
        split_documents(["a"], 0.5)


def test_split_keeps_a_group_on_one_side():
    """Two editions of one play must not end up one in train and one in val (a leak across editions)."""
    ids = [f"play{i}{edition}" for i in range(40) for edition in ("_gut", "_gut_f")]
    groups = [i[: -len("_gut_f")] if i.endswith("_f") else i[: -len("_gut")] for i in ids]
    train, val = split_documents(ids, 0.1, seed=0, groups=groups)
    assert len(val) == 2 * 4 and sorted(train + val) == list(range(80))            # 4 of the 40 plays, both copies
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert split_documents(ids, 0.1, groups=ids) == split_documents(ids, 0.1)       # one document per group
    with pytest.raises(ValueError, match="no training groups"):
        split_documents(["a_gut", "a_gut_f"], 0.3, groups=["a", "a"])
    with pytest.raises(ValueError, match="2 keys for 3 documents"):
        split_documents(["a", "b", "c"], 0.3, groups=["a", "b"])


def test_shard_files_are_written_and_read_by_shared_files(tmp_path):
    from shared import files
    assert issubclass(ShardError, files.FileFormatError)
    meta = write_shard(tmp_path / "s_000000.bin", np.arange(10), vocab_size=100, tokenizer="t")
    assert files.read_versioned_json(tmp_path / "s_000000.json", "llm-book-shard", 1, checksum=False) == meta
    (tmp_path / ".train_000003.bin.abc.tmp").write_bytes(b"half")                 # an interrupted atomic_write
    write_token_shards(tmp_path, "train", ["a b c"] * 3, encode_batch=lambda texts: [[1, 2]] * len(texts), eot=0,
                       vocab_size=10, tokenizer="t", shard_tokens=4, fingerprint="f")
    assert not any(files.is_temporary(p) for p in tmp_path.iterdir())


# ---------------------------------------------------------------- writing a split


def test_shards_hold_the_token_stream(tmp_path, docs, encoding):
    texts = [d.text for d in docs[:6]]
    metas = write_token_shards(tmp_path, "train", texts, fingerprint="f", **_settings(encoding, 50_000))
    stream = np.concatenate([open_shard(tmp_path / shard_name("train", m["index"])) for m in metas])
    expected = [t for text in texts for t in [encoding.eot_token] + encoding.encode_ordinary(text)]
    assert stream.tolist() == expected
    assert all(m["n_tokens"] == 50_000 for m in metas[:-1]) and 0 < metas[-1]["n_tokens"] <= 50_000
    assert metas[-1]["end"] == [6, 0]


@pytest.mark.parametrize("crash_at", ["train_000000.json", "train_000002.bin", "train_000003.json",
                                      "train_000005.json"])
def test_resume_after_a_crash_is_byte_identical(tmp_path, monkeypatch, docs, encoding, crash_at):
    texts = [d.text for d in docs[:5]]
    settings = _settings(encoding, 40_000)
    write_token_shards(tmp_path / "clean", "train", texts, fingerprint="f", **settings)
    real_replace = os.replace

    def crash(src, dst):
        if Path(dst).name == crash_at:
            raise RuntimeError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(RuntimeError, match="killed"):
        write_token_shards(tmp_path / "resumed", "train", texts, fingerprint="f", **settings)
    monkeypatch.setattr(os, "replace", real_replace)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return encoding.encode_ordinary_batch(batch)

    write_token_shards(tmp_path / "resumed", "train", texts, fingerprint="f", **{**settings, "encode_batch": counting})
    assert _files(tmp_path / "resumed") == _files(tmp_path / "clean")
    if crash_at == "train_000005.json":
        assert sum(calls) < len(texts)                                 # it resumed; it did not start over


def test_changed_fingerprint_rewrites_everything(tmp_path, docs, encoding):
    texts = [d.text for d in docs[:3]]
    write_token_shards(tmp_path, "train", texts, fingerprint="old", **_settings(encoding, 30_000))
    metas = write_token_shards(tmp_path, "train", texts[:2], fingerprint="new", **_settings(encoding, 30_000))
    assert {m["fingerprint"] for m in metas} == {"new"}
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == [shard_name("train", m["index"]) for m in metas]


def test_manifest_marks_a_complete_folder(tmp_path, docs, encoding):
    with pytest.raises(ShardError, match="did not finish"):
        open_split(tmp_path, "train")
    metas = write_token_shards(tmp_path, "train", [docs[0].text], fingerprint="f", **_settings(encoding, 10_000))
    manifest = write_manifest(tmp_path, {"train": metas}, tokenizer="gpt2")
    assert read_manifest(tmp_path)["splits"]["train"]["n_tokens"] == sum(m["n_tokens"] for m in metas)
    assert len(open_split(tmp_path, "train")) == len(manifest["splits"]["train"]["shards"])
    with pytest.raises(ShardError, match="no split 'val'"):
        open_split(tmp_path, "val")


# ---------------------------------------------------------------- the loader


def _toy_shards(n_tokens: int, sizes=(7, 30, 1, 50)) -> list[np.ndarray]:
    """The stream 0, 1, 2, ... cut into shards of uneven sizes (so blocks straddle shard boundaries)."""
    stream, shards, pos, i = np.arange(n_tokens), [], 0, 0
    while pos < n_tokens:
        shards.append(stream[pos:pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return shards


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_read_disjoint_blocks_that_cover_the_epoch(world_size, drop_last):
    T, B, n_tokens = 8, 3, 8 * 23 + 5                                  # 23 blocks: no world size divides it
    shards = _toy_shards(n_tokens)
    loaders = [BlockLoader(shards, T, B, rank=r, world_size=world_size, seed=1, drop_last=drop_last)
               for r in range(world_size)]
    n_blocks = loaders[0].n_blocks
    assert n_blocks == 23
    for epoch in (0, 1):
        starts, counts = [], []
        for loader in loaders:
            loader.set_epoch(epoch)
            steps = 0
            for x, y in loader:
                assert x.shape == y.shape and x.shape[1] == T and x.dtype == y.dtype
                assert (y == x + 1).all()                              # y is x shifted by one (stream = 0,1,2,...)
                assert (x[:, 0] % T == 0).all()                        # blocks start at multiples of T
                starts += (x[:, 0] // T).tolist()
                steps += 1
            counts.append(steps)
        assert len(set(counts)) == 1 and counts[0] == len(loaders[0])  # every rank runs the same number of steps
        unique, times = np.unique(starts, return_counts=True)
        remainder = n_blocks % world_size
        if drop_last:
            assert (times == 1).all() and len(unique) == n_blocks - remainder
        else:
            assert len(unique) == n_blocks and times.sum() - n_blocks == (world_size - remainder) % world_size
            assert (times <= 2).all()
        per_rank = [set(lo.blocks(epoch).tolist()) for lo in loaders]
        if drop_last:
            assert all(not per_rank[a] & per_rank[b] for a in range(world_size) for b in range(a + 1, world_size))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_token_position_covered_once_when_the_ranks_divide_the_blocks(world_size):
    T = 16
    n_tokens = T * 12 + 1                                              # 12 blocks: divisible by 1, 2, 3, 4
    loaders = [BlockLoader(_toy_shards(n_tokens), T, 5, rank=r, world_size=world_size, seed=7)
               for r in range(world_size)]
    positions = np.concatenate([x.flatten().numpy() for lo in loaders for x, _ in lo])
    assert sorted(positions.tolist()) == list(range(n_tokens - 1))     # x covers 0..N-2, y covers 1..N-1


def test_epochs_shuffle_differently_and_deterministically():
    shards = _toy_shards(8 * 40 + 1)
    a, b = BlockLoader(shards, 8, 4, seed=0), BlockLoader(shards, 8, 4, seed=0)
    assert (a.blocks(0) == b.blocks(0)).all() and not (a.blocks(0) == a.blocks(1)).all()
    assert not (a.blocks(0) == BlockLoader(shards, 8, 4, seed=1).blocks(0)).all()
    assert BlockLoader(shards, 8, 4, shuffle=False).blocks(0).tolist() == list(range(40))


def test_too_little_data_for_the_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="not enough data for 4 ranks"):
        BlockLoader([np.arange(100)], block_size=33, batch_size=1, world_size=4)   # 3 blocks
    BlockLoader([np.arange(133)], block_size=33, batch_size=1, world_size=4)       # 4 blocks: fine
    with pytest.raises(ValueError, match="rank must be"):
        BlockLoader([np.arange(1000)], 8, 1, rank=4, world_size=4)


def test_loader_on_real_shards(tmp_path, docs, encoding):
    texts = [d.text for d in docs[:4]]
    metas = write_token_shards(tmp_path, "train", texts, fingerprint="f", **_settings(encoding, 25_000))
    write_manifest(tmp_path, {"train": metas}, tokenizer="gpt2")
    stream = np.array([t for text in texts for t in [encoding.eot_token] + encoding.encode_ordinary(text)])
    T = 64
    for world_size in (1, 2, 3, 4):
        seen = []
        for r in range(world_size):
            for x, y in BlockLoader(tmp_path, T, 16, rank=r, world_size=world_size, drop_last=True):
                seen += list(zip(x.numpy(), y.numpy()))
        n_blocks = (len(stream) - 1) // T
        assert len(seen) == n_blocks - n_blocks % world_size
        expected = {tuple(stream[k * T:(k + 1) * T + 1]) for k in range(n_blocks)}
        got = {tuple(np.concatenate([rx, ry[-1:]])) for rx, ry in seen}
        assert got <= expected and len(got) == len(seen)


# ---------------------------------------------------------------- the chapter script


def _prepare(*args) -> tuple[int, str]:
    """Run prepare_data.main in this process (fast); return (exit code, message of a refusal)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.main([str(a) for a in args]), ""
    except SystemExit as e:
        return 1, str(e.code)


def test_prepare_data_help():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--source", "--tokenizer", "--out", "--val-fraction", "--shard-tokens", "--overwrite"):
        assert flag in result.stdout


def test_prepare_data_killed_midway_then_rerun_gives_identical_shards(tmp_path, capsys):
    args = ["--source", "shakespeare", "--max-docs", "16", "--shard-tokens", "4000", "--val-fraction", "0.2"]
    assert _prepare(*args, "--out", tmp_path / "clean")[0] == 0
    clean = _files(tmp_path / "clean")
    assert "manifest.json" in clean and sum(name.endswith(".bin") for name in clean) > 50

    killed = tmp_path / "killed"                 # a real process, killed with SIGKILL (no chance to clean up)
    env = {**os.environ, "LLM_BOOK_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args, "--out", str(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("train_*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
    assert _files(killed) != clean
    with pytest.raises(ShardError):
        read_manifest(killed)

    assert _prepare(*args, "--out", killed)[0] == 0
    assert _files(killed) == clean
    capsys.readouterr()
    assert _prepare(*args, "--out", killed)[0] == 0
    assert "already complete" in capsys.readouterr().out and _files(killed) == clean


def test_prepare_data_refuses_other_settings_unless_overwrite(tmp_path):
    out = tmp_path / "data"
    assert _prepare("--max-docs", "3", "--shard-tokens", "50000", "--out", out)[0] == 0
    code, message = _prepare("--max-docs", "3", "--shard-tokens", "40000", "--out", out)
    assert code != 0 and "shard_tokens" in message and "--overwrite" in message
    assert _prepare("--max-docs", "3", "--shard-tokens", "40000", "--out", out, "--overwrite")[0] == 0
    assert read_manifest(out)["settings"]["shard_tokens"] == 40_000
    assert not list(out.glob("*.tmp"))
    x, y = next(iter(BlockLoader(out, block_size=128, batch_size=4, split="val")))
    assert x.shape == (4, 128)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    code, message = _prepare("--max-docs", "3", "--out", tmp_path / "mine", "--overwrite")
    assert code != 0 and "did not write" in message and (tmp_path / "mine" / "notes.txt").exists()
    code, message = _prepare("--val-fraction", "1.5", "--out", tmp_path / "x")
    assert code != 0 and "--val-fraction" in message


def test_prepare_data_with_a_trained_bpe_file(tmp_path, docs):
    from shared.bpe import BPETokenizer
    tok_path = BPETokenizer.train(docs[0].text, vocab_size=400, name="tiny").save(tmp_path / "tiny.json")
    out = tmp_path / "data"
    assert _prepare("--max-docs", "4", "--tokenizer", tok_path, "--out", out, "--val-fraction", "0.25")[0] == 0
    manifest = read_manifest(out)
    assert manifest["vocab_size"] == 400 and (out / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    tok = BPETokenizer.load(out / "tokenizer.json")
    val_text = docs[split_documents([d.id for d in docs[:4]], 0.25)[1][0]].text
    expected = [tok.special_tokens["<|endoftext|>"]] + tok.encode(val_text)
    assert np.concatenate(open_split(out, "val")).tolist() == expected
    code, message = _prepare("--tokenizer", tmp_path / "missing.json", "--out", tmp_path / "x")
    assert code != 0 and "no such tokenizer file" in message
    no_eot = BPETokenizer.train("abc", vocab_size=260, special_tokens=[]).save(tmp_path / "no-eot.json")
    code, message = _prepare("--tokenizer", no_eot, "--out", tmp_path / "y")
    assert code != 0 and "<|endoftext|>" in message


def test_prepare_data_with_cleaning_and_dedup(tmp_path, capsys):
    pytest.importorskip("shared.cleaning")
    pytest.importorskip("shared.dedup")
    out = tmp_path / "web"
    assert _prepare("--source", "web_text", "--clean", "--dedup", "--out", out)[0] == 0
    printed = capsys.readouterr().out
    assert "cleaning kept" in printed and "deduplication kept" in printed
    manifest = read_manifest(out)
    assert manifest["settings"]["clean"] and manifest["settings"]["dedup"]
    kept = manifest["documents"]["train"] + manifest["documents"]["val"]
    assert 0 < kept < len(load("web_text", verbose=False))          # the cleaning rules removed something


# ---------------------------------------------------------------- prepare_data.py: nothing lost, one clear line


def test_prepare_data_never_deletes_what_it_did_not_write(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "tokenizer.json").write_text("my own tokenizer", encoding="utf-8")
    (user / "val_notes.txt").write_text("my notes", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        code, message = _prepare("--max-docs", "3", "--out", user, *extra)
        assert code != 0 and "val_notes.txt" in message and "nothing was changed" in message
    assert sorted(_files(user)) == ["tokenizer.json", "val_notes.txt"]
    (user / "val_notes.txt").unlink()                          # only a file with one of our names, but not ours
    code, message = _prepare("--max-docs", "3", "--out", user)
    assert code != 0 and "has no prepare.json" in message and "--overwrite" in message
    assert (user / "tokenizer.json").read_text(encoding="utf-8") == "my own tokenizer"


def test_prepare_data_does_not_replace_a_dataset_without_its_prepare_json(tmp_path):
    out = tmp_path / "data"
    assert _prepare("--max-docs", "3", "--out", out)[0] == 0
    (out / "prepare.json").unlink()                            # e.g. a dataset copied without it
    before = _files(out)
    code, message = _prepare("--max-docs", "4", "--out", out)
    assert code != 0 and "has no prepare.json" in message and _files(out) == before
    assert _prepare("--max-docs", "4", "--out", out, "--overwrite")[0] == 0       # asked: replaced
    assert read_manifest(out)["settings"]["documents"] == 4 and (out / "prepare.json").exists()


def test_prepare_data_bad_out_source_and_tokenizer_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "sub"):
        code, message = _prepare("--max-docs", "2", "--out", out)
        assert code != 0 and message.startswith(f"--out {out}:") and "\n" not in message
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", read_only)
    code, message = _prepare("--max-docs", "2", "--out", tmp_path / "ro")
    assert code != 0 and message == f"--out {tmp_path / 'ro'}: cannot write there (Permission denied); choose another folder"
    code, message = _prepare("--source", "nope", "--out", tmp_path / "x")
    assert code != 0 and message.startswith("--source: unknown source 'nope';")          # no KeyError quotes
    code, message = _prepare("--tokenizer", tmp_path, "--out", tmp_path / "y")
    assert code != 0 and message == f"--tokenizer: {tmp_path}: is a directory, not a tokenizer file"


def test_prepare_data_one_document_source_is_one_line(tmp_path, monkeypatch):
    from shared import registry
    monkeypatch.setitem(registry.REGISTRY, "one_text_fixture", registry.Source(
        "one_text_fixture", "fixture", (registry.Loader("fixture", False,
                                                        lambda f: [registry.Document("tiny", "To be. " * 100)]),)))
    code, message = _prepare("--source", "one_text_fixture", "--out", tmp_path / "one")
    assert code != 0 and "leaves no training documents out of 1" in message and "--val-fraction 0" in message
    assert _prepare("--source", "one_text_fixture", "--val-fraction", "0", "--out", tmp_path / "one")[0] == 0


def test_recommended_shakespeare_command_keeps_editions_out_of_validation(tmp_path):
    """The chapter-3 command of notebook 06: after --dedup at 0.1 no validation play has an edition in training."""
    from shared.dedup import MinHasher, exact_jaccard_pairs
    out = tmp_path / "shakespeare"
    assert _prepare("--source", "shakespeare", "--dedup", "--dedup-threshold", "0.1", "--out", out)[0] == 0
    manifest = read_manifest(out)
    assert manifest["settings"]["dedup_threshold"] == 0.1 and manifest["documents"] == {"train": 41, "val": 3}
    docs = load("shakespeare")
    hashes, counts = MinHasher(ngram=5).shingle_hashes([d.text for d in docs])
    pairs, jaccard = exact_jaccard_pairs(hashes, counts)
    editions = {frozenset((docs[a].id, docs[b].id)) for a, b in pairs[jaccard >= 0.1].tolist()}
    from shared.dedup import deduplicate_documents
    kept = deduplicate_documents(docs, threshold=0.1, num_perm=256)
    train, val = split_documents([d.id for d in kept], 0.05, 0)
    val_ids, train_ids = {kept[i].id for i in val}, {kept[i].id for i in train}
    assert not [e for e in editions if e & val_ids and e & train_ids]
