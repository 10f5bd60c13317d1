"""The dataset registry: offline fallbacks work, failures say what was tried."""
import pytest

from shared import registry


def test_unknown_source_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown source 'nope'.*shakespeare"):
        registry.load("nope")


def test_failing_loaders_report_everything_tried(monkeypatch, tmp_path):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")

    def broken(folder):
        raise OSError("disk on fire")

    registry.register("broken_fixture", "a source that cannot load",
                      registry.Loader("online: somewhere", True, broken),
                      registry.Loader("offline: a local file", False, broken))
    try:
        with pytest.raises(registry.SourceUnavailable) as info:
            registry.load("broken_fixture")
    finally:
        del registry.REGISTRY["broken_fixture"]
    message = str(info.value)
    assert "online: somewhere: skipped because LLM_BOOK_OFFLINE=1" in message
    assert "offline: a local file: OSError: disk on fire" in message
    assert registry.CACHE_ENV in message


def test_falls_back_to_the_next_loader(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(registry.OFFLINE_ENV, raising=False)

    def no_network(folder):
        raise ConnectionError("no route to host")

    registry.register("fallback_fixture", "fixture",
                      registry.Loader("online: the web", True, no_network),
                      registry.Loader("offline: the cache", False, lambda folder: ["ok"]))
    try:
        assert registry.load("fallback_fixture") == ["ok"]
    finally:
        del registry.REGISTRY["fallback_fixture"]
    assert "fallback_fixture: loaded from offline: the cache" in capsys.readouterr().out


def test_shakespeare_offline_is_the_real_corpus():
    docs = registry.load("shakespeare")
    assert len(docs) > 70
    text = "".join(d.text for d in docs)
    assert 8e6 < len(text) < 12e6
    assert "To be, or not to be" in text or "To be, or not to be".lower() in text.lower()


def test_gpt2_encoding_matches_known_ids():
    enc = registry.gpt2_encoding()
    assert enc.n_vocab == 50257
    # GPT-2 ids of "Hello world" and the end-of-text token, as published with the model.
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
