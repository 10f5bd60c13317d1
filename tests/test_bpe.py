"""Tests for shared/bpe.py (from ch02_data/04_bpe_tokenizer.ipynb): our byte-level BPE against tiktoken's gpt2."""
from __future__ import annotations

import base64
import json
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bpe import (ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer, TokenizerFileError, count_chunks, count_pairs,
                        gpt2_tokenizer, merge_pair, pretokenize, train_merges, train_merges_naive)
from shared.registry import REGISTRY, gpt2_encoding, load

NASTY = [
    "", " ", "  ", "\n", "\n\n\n", "\r\n\r\n", "   \t  \n  x", "x   ", "trailing spaces   \n", "\u3000\u3000full-width",
    "1234567890 3.14 1e-5 0x1F ١٢٣ ⅫⅣ", "naïve Ünïcödé — ﬁ ß ẞ İı", "日本語のテキスト、中文。한국어", "Ελληνικά кириллица",
    "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 🙂🙂🙂 a🙂b", "it's I'M you'LL we've they'd 'tis 's", "a\u00a0b\u2009c\u200bd",
    "\x00\x01\x7f\x1b[0m", "tabs\t\t\tand\x0bvertical\x0cfeeds", "<|endoftext|>", "x<|endoftext|>y<|endoftext|>",
    "<|endoftext", "مرحبا بالعالم",
    "    def f(x):\n        return x  # comment\n\n\n", "$$$ ... !!! ??? ---", "a" * 3000, " " * 500 + "b",
]


# ---------------------------------------------------------------- fixtures: real text


def _docs(name: str) -> list[str]:
    return [d.text for d in load(name, verbose=False)]


def _python_source(limit_bytes: int) -> str:
    """Standard-library source: the registry's "python_source" when registered, else read straight from disk."""
    if "python_source" in REGISTRY:
        texts = _docs("python_source")
    else:
        root = Path(sysconfig.get_paths()["stdlib"])
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]
    out, size = [], 0
    for text in texts:
        out.append(text)
        size += len(text)
        if size >= limit_bytes:
            break
    return "\n".join(out)


def _web_text() -> str:
    if "web_text" in REGISTRY:
        return "\n".join(_docs("web_text"))
    from importlib import metadata
    return "\n".join(d.metadata.get_payload() or "" for d in metadata.distributions())


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return "\n".join(_docs("shakespeare"))


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    return gpt2_encoding()


@pytest.fixture(scope="module")
def trained(shakespeare) -> BPETokenizer:
    """A small tokenizer trained on 1 MB of Shakespeare (2,000 tokens, with <|endoftext|>)."""
    return BPETokenizer.train(shakespeare[:1_000_000], vocab_size=2000, name="test-2k")


# ---------------------------------------------------------------- pre-tokenisation and the pieces


def test_pattern_is_tiktokens_gpt2_pattern():
    from tiktoken_ext.openai_public import r50k_pat_str
    assert GPT2_SPLIT_PATTERN == r50k_pat_str


def test_pretokenize_examples():
    assert pretokenize("Hello world's  end") == ["Hello", " world", "'s", " ", " end"]
    assert pretokenize("x = 12345\n\n") == ["x", " =", " 12345", "\n\n"]
    assert "".join(pretokenize(NASTY[10])) == NASTY[10]


def test_count_pairs_and_merge_pair():
    assert count_pairs([1, 1, 1, 2]) == {(1, 1): 2, (1, 2): 1}
    assert count_pairs([1, 2], {(1, 2): 3}, weight=2) == {(1, 2): 5}
    assert merge_pair([1, 1, 1, 2, 1, 1], (1, 1), 9) == [9, 1, 2, 9]        # left to right, no overlap
    assert merge_pair([1, 2, 3], (3, 4), 9) == [1, 2, 3]


def test_count_chunks_weights_and_special_tokens():
    counts = count_chunks(["the cat the", " cat<|endoftext|>the"], special_tokens=[ENDOFTEXT])
    assert counts == {b"the": 2, b" cat": 2, b" the": 1}


# ---------------------------------------------------------------- training


def test_training_reproduces_merges_computed_by_hand():
    # Wikipedia's example: aa (4, overlapping) -> 256; tie ab/(256,a) at 2 -> smaller ids (97, 98); then (256, 257).
    for naive in (False, True):
        tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=[], naive=naive)
        assert tok.merges == [(97, 97), (97, 98), (256, 257)]
        assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_training_with_pretokenisation_by_hand():
    # chunks: "hug" 1, " hug" 2, " pug" 1, " pun" 1, " bun" 1, " hugs" 1 (worked out pair by pair in the comments):
    # ug=5 -> 256; h+ug=4 -> 257; " "+hug=3 -> 258; tie " p"=2 vs "un"=2 -> (32, 112) first -> 259; un -> 260;
    # then every pair occurs once: the smallest ids (32, 98) = " b" -> 261.
    expected = [(117, 103), (104, 256), (32, 257), (32, 112), (117, 110), (32, 98)]
    for naive in (False, True):
        tok = BPETokenizer.train("hug hug hug pug pun bun hugs", vocab_size=262, special_tokens=[], naive=naive)
        assert tok.merges == expected
    assert tok.vocab[256:] == [b"ug", b"hug", b" hug", b" p", b"un", b" b"]


def test_incremental_and_naive_trainers_agree_on_real_text(shakespeare):
    counts = count_chunks(shakespeare[2_000_000:2_030_000])
    merges = train_merges(counts, 200)
    assert len(merges) == 200
    assert merges == train_merges_naive(counts, 200)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="aab c\n.", max_size=80), st.integers(0, 30))
def test_incremental_and_naive_trainers_agree_on_random_text(text, num_merges):
    counts = count_chunks(text)
    assert train_merges(counts, num_merges) == train_merges_naive(counts, num_merges)


def test_training_stops_when_nothing_is_left_to_merge():
    tok = BPETokenizer.train("ab ab", vocab_size=1000, special_tokens=[ENDOFTEXT])
    assert tok.vocab[256:] == [b"ab", b" ab"]               # then every chunk is one token
    assert tok.special_tokens == {ENDOFTEXT: 258} and tok.vocab_size == 259


def test_merges_are_a_prefix(shakespeare):
    text = shakespeare[:200_000]
    big = BPETokenizer.train(text, vocab_size=600)
    small = BPETokenizer.train(text, vocab_size=400)
    assert big.merges[:len(small.merges)] == small.merges
    assert big.truncated(len(small.merges)).merges == small.merges
    assert big.truncated(143).special_tokens == {ENDOFTEXT: 256 + 143}


def test_special_tokens_never_merge():
    tok = BPETokenizer.train("<|endoftext|>" * 50 + "ab ab", vocab_size=270)
    assert all(b"<|" not in t for t in tok.vocab[256:])


def test_train_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("abc", vocab_size=256)          # 256 bytes + <|endoftext|> do not fit


# ---------------------------------------------------------------- GPT-2: exact equality with tiktoken


def test_gpt2_first_ids_and_merges(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.base[:3] == b'!"#' and gpt2.vocab[256] == b" t"


def test_gpt2_ids_equal_tiktoken_on_megabytes_of_real_text(gpt2, tiktoken_gpt2, shakespeare):
    corpora = {"shakespeare": shakespeare[:6_000_000], "web_text": _web_text(),
               "python_source": _python_source(2_000_000)}
    total = 0
    for name, text in corpora.items():
        ours, theirs = gpt2.encode_ordinary(text), tiktoken_gpt2.encode_ordinary(text)
        if ours != theirs:
            i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            pytest.fail(f"{name}: first difference at token {i}: ours {ours[i:i + 5]} vs tiktoken {theirs[i:i + 5]}")
        assert len(ours) == len(theirs)
        total += len(text.encode("utf-8"))
    assert total > 8_000_000


def test_gpt2_edge_cases_and_special_tokens(gpt2, tiktoken_gpt2):
    for text in NASTY:
        for kwargs in ({"allowed_special": "all"}, {"disallowed_special": ()}, {"allowed_special": {ENDOFTEXT}}):
            assert gpt2.encode(text, **kwargs) == tiktoken_gpt2.encode(text, **kwargs), (text, kwargs)
        if ENDOFTEXT in text:
            for encoder in (gpt2, tiktoken_gpt2):
                with pytest.raises(ValueError):
                    encoder.encode(text)
        else:
            assert gpt2.encode(text) == tiktoken_gpt2.encode(text)
    assert gpt2.encode("a<|endoftext|>b", allowed_special="all") == [64, 50256, 65]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_gpt2_equals_tiktoken_on_arbitrary_text(text):
    tok, enc = _cached_gpt2()
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)


def _cached_gpt2(_memo={}):
    if not _memo:
        _memo["pair"] = (gpt2_tokenizer(), gpt2_encoding())
    return _memo["pair"]


def test_gpt2_recovered_merges_rebuild_the_ranks(gpt2):
    ranks = load("gpt2_bpe", verbose=False)
    assert {token: i for i, token in enumerate(gpt2.vocab)} == ranks


def test_from_tiktoken_ranks_rejects_bad_ranks():
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="0..n-1"):
        BPETokenizer.from_tiktoken_ranks({**ranks, b"ab": 300})
    with pytest.raises(ValueError, match="not the merge of two"):
        BPETokenizer.from_tiktoken_ranks({**ranks, b"abc": 256})


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2, tiktoken_gpt2):
    text = "a\ud800b"
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


# ---------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_encode_roundtrip_text(text):
    tok, _ = _cached_gpt2()
    assert tok.decode(tok.encode(text, disallowed_special=())) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_encode_roundtrip_bytes(data):
    tok, _ = _cached_gpt2()
    ids = tok.encode_bytes(data)
    assert tok.decode_bytes(ids) == data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert ids == tok.encode_ordinary(text)            # valid UTF-8: the same ids as encoding the text


def test_roundtrip_every_byte_value_with_a_trained_tokenizer(trained):
    data = bytes(range(256)) * 3
    assert trained.decode_bytes(trained.encode_bytes(data)) == data


def test_decode_rejects_unknown_ids(trained):
    with pytest.raises(ValueError, match="unknown token ids"):
        trained.decode([1, 5000])
    with pytest.raises(ValueError, match="unknown special tokens"):
        trained.encode("x", allowed_special={"<|nope|>"})


# ---------------------------------------------------------------- tiktoken export


def test_export_encodes_like_our_encoder(trained, shakespeare):
    exported = trained.to_tiktoken()
    text = shakespeare[3_000_000:5_000_000] + "\n" + _web_text()
    assert exported.encode_ordinary(text) == trained.encode_ordinary(text)
    for text in NASTY:
        assert exported.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert exported.n_vocab == trained.vocab_size == 2000


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cn", "Cs"))))     # the Unicode exception: see below
def test_export_encodes_like_our_encoder_on_arbitrary_text(text):
    tok, exported = _cached_trained()
    assert exported.encode_ordinary(text) == tok.encode_ordinary(text)


def _cached_trained(_memo={}):
    if not _memo:
        text = "\n".join(_docs("shakespeare"))[:300_000] + _web_text()[:200_000]
        tok = BPETokenizer.train(text, vocab_size=1500)
        _memo["pair"] = (tok, tok.to_tiktoken())
    return _memo["pair"]


def test_gpt2_export_is_tiktokens_gpt2(gpt2, tiktoken_gpt2, shakespeare):
    text = shakespeare[:300_000]
    assert gpt2.to_tiktoken().encode(text) == tiktoken_gpt2.encode(text)


# ---------------------------------------------------------------- files


def test_save_load_roundtrip(trained, tmp_path, shakespeare):
    path = trained.save(tmp_path / "tok.json")
    loaded = BPETokenizer.load(path)
    assert (loaded.merges, loaded.vocab, loaded.special_tokens, loaded.pattern, loaded.name) == \
        (trained.merges, trained.vocab, trained.special_tokens, trained.pattern, trained.name)
    text = shakespeare[-100_000:]
    assert loaded.encode(text) == trained.encode(text)
    assert not list(tmp_path.glob("*.part"))


def test_save_load_roundtrip_gpt2(gpt2, tmp_path):
    loaded = BPETokenizer.load(gpt2.save(tmp_path / "gpt2.json"))
    assert loaded.base == gpt2.base and loaded.merges == gpt2.merges and loaded.special_tokens == {ENDOFTEXT: 50256}


def _rewrite(data: dict) -> dict:
    """Re-sign content so that a test can reach the structural checks behind the checksum."""
    from shared.files import json_checksum
    data = {k: v for k, v in data.items() if k != "sha256"}
    return {**data, "sha256": json_checksum(data)}


def test_corrupt_and_foreign_files_raise_clear_errors(trained, tmp_path):
    good = trained.save(tmp_path / "good.json").read_text(encoding="utf-8")
    data = json.loads(good)
    cases = {
        "truncated": (good[: len(good) // 3], "corrupt tokenizer file, not valid JSON"),
        "edited": (good.replace("[32],[116]", "[32],[117]", 1), "checksum mismatch"),
        "flipped": (good.replace('"version":1', '"version":2'), "version 2 is not supported"),
        "foreign": (json.dumps({"format": "sentencepiece", "version": 1}),
                    "not a llm-book-bpe tokenizer file \\(format: 'sentencepiece'\\)"),
        "hf": (json.dumps({"version": "1.0", "model": {"type": "BPE"}}), "Hugging Face"),
        "list": ("[1, 2, 3]", "not a llm-book-bpe tokenizer file"),
        "tiktoken": ("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(trained.vocab)),
                     "tiktoken ranks file"),
        "no-merges": (json.dumps(_rewrite({k: v for k, v in data.items() if k != "merges"})), "invalid"),
        "unknown-part": (json.dumps(_rewrite({**data, "merges": [[[1000], [1]]]})), "invalid"),
        "bad-base": (json.dumps(_rewrite({**data, "base": [0] * 256})), "invalid"),
        "bad-special": (json.dumps(_rewrite({**data, "special_tokens": {ENDOFTEXT: 3}})), "invalid"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(TokenizerFileError, match=message):
            BPETokenizer.load(path)
    (tmp_path / "binary.json").write_bytes(b"\x80\x81\xff" * 10)
    with pytest.raises(TokenizerFileError, match="not UTF-8"):
        BPETokenizer.load(tmp_path / "binary.json")
    with pytest.raises(TokenizerFileError, match="no such tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")
    with pytest.raises(TokenizerFileError, match="is a directory, not a tokenizer file"):
        BPETokenizer.load(tmp_path)


def test_tokenizer_errors_are_file_format_errors_and_saves_are_atomic(trained, tmp_path, monkeypatch):
    """One home for versioned JSON: shared.files reads and writes tokenizer files."""
    from shared import files
    from shared.bpe import get_encoding
    assert issubclass(TokenizerFileError, files.FileFormatError)
    with pytest.raises(TokenizerFileError, match="is a directory"):
        get_encoding(tmp_path)                                       # used to raise IsADirectoryError
    path = trained.save(tmp_path / "tok.json")
    assert files.read_versioned_json(path, "llm-book-bpe", 1, kind="tokenizer file")["name"] == trained.name
    before = path.read_bytes()

    import shared.bpe as bpe

    def interrupted(target, data):             # the real atomic_write, with a crash half-way through the bytes
        def write_half(tmp):
            tmp.write_bytes(data.encode("utf-8")[: len(data) // 2])
            raise KeyboardInterrupt
        return files.atomic_write(target, write_half)

    monkeypatch.setattr(bpe, "atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trained.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]


def test_gpt2_encoder_and_tiktoken_differ_only_on_newer_unicode(gpt2, tiktoken_gpt2):
    """The documented exception to "identical ids": letters and digits that Unicode assigned after 14.0, which the
    regex package knows and tiktoken's engine may not. Everything assigned by Unicode 14.0 splits alike."""
    import random
    import unicodedata

    import regex
    example = chr(0x0C5C) + "'s"
    assert unicodedata.category(chr(0x0C5C)) == "Cn" and regex.match(r"\p{L}", chr(0x0C5C))
    assert gpt2.encode_ordinary(example)[-1] == 338 and tiktoken_gpt2.encode_ordinary(example)[-2:] == [6, 82]
    rng = random.Random(0)
    code_points = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    assigned = rng.sample([c for c in code_points if unicodedata.category(chr(c)) != "Cn"], 4000)
    for c in assigned:
        for text in (chr(c) + "'s", " " + chr(c) * 3 + "7x", "a" + chr(c) + " ."):
            assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text), hex(c)
    differ = [c for c in rng.sample(code_points, 4000)
              if gpt2.encode_ordinary(chr(c) + "'s") != tiktoken_gpt2.encode_ordinary(chr(c) + "'s")]
    assert all(unicodedata.category(chr(c)) == "Cn" and regex.match(r"[\p{L}\p{N}]", chr(c)) for c in differ)


def test_duplicate_tokens_are_refused_where_they_would_be_ambiguous(tmp_path):
    # "abc" made twice: (ab, c) and (a, bc) -- a file of byte merges and tiktoken's ranks cannot represent that
    tok = BPETokenizer([(97, 98), (98, 99), (256, 99), (97, 257)])
    assert tok.vocab[258] == tok.vocab[259] == b"abc"
    with pytest.raises(ValueError, match="same bytes"):
        tok.save(tmp_path / "dup.json")
    with pytest.raises(ValueError, match="same bytes"):
        tok.to_tiktoken()
    with pytest.raises(ValueError, match="does not exist yet"):
        BPETokenizer([(97, 300)])


def test_a_tokenizer_fits_a_model_with_a_row_for_each_of_its_ids(trained):
    """Ours and its tiktoken twin count the same ids, special tokens included; one row short is refused."""
    from shared.bpe import check_tokenizer_fits, vocab_size_of
    fast = trained.to_tiktoken()
    assert vocab_size_of(trained) == vocab_size_of(fast) == max(trained.special_tokens.values()) + 1
    for tokenizer in (trained, fast):
        check_tokenizer_fits(tokenizer, vocab_size_of(trained))          # exactly enough rows
        check_tokenizer_fits(tokenizer, vocab_size_of(trained) + 64)     # padded embeddings are fine
        with pytest.raises(ValueError, match="pass the tokenizer the model was trained with"):
            check_tokenizer_fits(tokenizer, vocab_size_of(trained) - 1)
