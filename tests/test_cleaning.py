"""Cleaning (shared/html_text.py and shared/cleaning.py, notebook ch02_data/02_cleaning): HTML extraction and each
rule keep and drop what they should.

Fixtures are cut from real text: Hamlet (Gutenberg), PyPI project pages (httpx, httpcore, tqdm, psutil,
fonttools), HumanEval's tests, the Universal Declaration of Human Rights.
"""
import pytest

from shared.cleaning import (Step, alphabetic_word_fraction, bullet_line_fraction, clean_documents, default_steps,
                             duplicate_line_fraction, duplicate_ngram_char_fraction, ellipsis_line_fraction,
                             english_stop_word_ratio, find_pii, gopher_quality_steps, gopher_repetition_steps, keep_if,
                             mask_pii, mean_word_length, normalize_unicode, normalize_whitespace, run_pipeline,
                             stop_word_count, symbol_to_word_ratio, top_ngram_char_fraction, transform, word_count)
from shared.html_text import html_to_text, strip_html
from shared.registry import Document, load

HAMLET = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles,
And by opposing end them? To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life;"""

# PyPI project pages (METADATA long descriptions), cut verbatim
BABEL = "A collection of tools for internationalizing Python applications."
TQDM_BADGES = """.. |Build-Status| image:: https://img.shields.io/github/actions/workflow/status/tqdm/tqdm/test.yml?branch=master&label=tqdm&logo=GitHub
   :target: https://github.com/tqdm/tqdm/actions/workflows/test.yml
.. |Coverage-Status| image:: https://img.shields.io/coveralls/github/tqdm/tqdm/master?logo=coveralls
   :target: https://coveralls.io/github/tqdm/tqdm
.. |Branch-Coverage-Status| image:: https://codecov.io/gh/tqdm/tqdm/branch/master/graph/badge.svg
   :target: https://codecov.io/gh/tqdm/tqdm
.. |Codacy-Grade| image:: https://app.codacy.com/project/badge/Grade/3f965571598f44549c7818f29cdcf177
   :target: https://app.codacy.com/gh/tqdm/tqdm/dashboard"""
HTTPCORE_CHANGELOG = """## 0.13.3 (May 6th, 2021)

### Added

- Support HTTP/2 prior knowledge, using `httpcore.SyncConnectionPool(http1=False)`. (Pull #333)

### Fixed

- Handle cases where environment does not provide `select.poll` support. (Pull #331)

## 0.13.2 (April 29th, 2021)

### Added

- Improve error message for specific case of `RemoteProtocolError` where server disconnects without sending a response. (Pull #313)

## 0.13.1 (April 28th, 2021)

### Fixed

- More resiliant testing for closed connections. (Pull #311)
- Don't raise exceptions on ungraceful connection closes. (Pull #310)"""
HTTPX_DEPENDENCIES = """* `httpcore` - The underlying transport implementation for `httpx`.
  * `h11` - HTTP/1.1 support.
* `certifi` - SSL certificates.
* `idna` - Internationalized domain name support.
* `sniffio` - Async library autodetection.
* `h2` - HTTP/2 support. *(Optional, with `httpx[http2]`)*
* `socksio` - SOCKS proxy support. *(Optional, with `httpx[socks]`)*
* `rich` - Rich terminal support. *(Optional, with `httpx[cli]`)*
* `click` - Command line client support. *(Optional, with `httpx[cli]`)*"""
HTTPX_HEAD = """<p align="center">
  <a href="https://www.python-httpx.org/"><img width="350" height="208" src="https://raw.githubusercontent.com/encode/httpx/master/docs/img/butterfly.png" alt='HTTPX'></a>
</p>

<p align="center"><strong>HTTPX</strong> <em>- A next-generation HTTP client for Python.</em></p>

HTTPX is a fully featured HTTP client library for Python 3.

```pycon
>>> r = httpx.get('https://www.example.org/')
>>> r
<Response [200 OK]>
>>> r.text
'<!doctype html>\\n<html>\\n<head>\\n<title>Example Domain</title>...'
```

Install HTTPX using pip:"""
PSUTIL_CONNECTIONS = ("[sconn(fd=115, family=<AddressFamily.AF_INET: 2>, type=<SocketType.SOCK_STREAM: 1>, "
                      "laddr=addr(ip='10.0.0.1', port=48776), raddr=addr(ip='93.186.135.91', port=80), "
                      "status='ESTABLISHED', pid=1254),")
HUMANEVAL_0_TEST = """def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False"""
UDHR_1 = {
    "en": "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
          "conscience and should act towards one another in a spirit of brotherhood.",
    "fr": "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison et de "
          "conscience et doivent agir les uns envers les autres dans un esprit de fraternité.",
    "de": "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen "
          "begabt und sollen einander im Geist der Brüderlichkeit begegnen.",
    "es": "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como están de razón y "
          "conciencia, deben comportarse fraternalmente los unos con los otros.",
}


def _passes(rule_name: str, text: str) -> bool:
    steps = {s.name: s for s in gopher_quality_steps() + gopher_repetition_steps()}
    matches = [s for name, s in steps.items() if rule_name in name]
    assert len(matches) == 1, f"no single rule named like {rule_name!r}: {list(steps)}"
    return bool(matches[0].fn(text))


ALL_RULES = ["100,000 words", "mean word length", "symbol/word", "bullet lines", "ellipsis", "with a letter",
             "stop words", "gopher: duplicate lines", "chars in duplicate lines", "top 2/3/4-gram",
             "repeated 5-10-gram"]


@pytest.mark.parametrize("rule", ALL_RULES)
def test_real_prose_passes_every_rule(rule):
    assert _passes(rule, HAMLET)


def test_length_rule():
    assert word_count(BABEL) == 8 and not _passes("100,000 words", BABEL)
    assert word_count("To be , or not -- to be") == 6          # punctuation-only tokens do not count
    assert not _passes("100,000 words", " ".join([HAMLET] * 900))      # over 100,000 words


def test_mean_word_length_rule():
    assert mean_word_length(TQDM_BADGES) > 10 and not _passes("mean word length", TQDM_BADGES)
    digits = "1 2 3 4 5 6 7 8 9 10 " * 10
    assert mean_word_length(digits) < 3 and not _passes("mean word length", digits)


def test_symbol_rule():
    assert symbol_to_word_ratio(HTTPCORE_CHANGELOG) > 0.1 and not _passes("symbol/word", HTTPCORE_CHANGELOG)
    truncated = "\n".join(line.rstrip(",;:?") + "..." for line in HAMLET.split("\n"))
    assert not _passes("symbol/word", truncated)               # one ellipsis per 7 words


def test_bullet_rule():
    assert bullet_line_fraction(HTTPX_DEPENDENCIES) == 1.0 and not _passes("bullet lines", HTTPX_DEPENDENCIES)
    mixed = HTTPX_DEPENDENCIES + "\n" + HAMLET
    assert _passes("bullet lines", mixed)


def test_ellipsis_rule():
    truncated = "\n".join(line + ("…" if i % 2 else "") for i, line in enumerate(HAMLET.split("\n")))
    assert ellipsis_line_fraction(truncated) == 0.5 and not _passes("ellipsis", truncated)
    assert ellipsis_line_fraction(HAMLET) == 0.0


def test_alphabetic_words_rule():
    assert alphabetic_word_fraction(HUMANEVAL_0_TEST) < 0.8 and not _passes("with a letter", HUMANEVAL_0_TEST)
    assert alphabetic_word_fraction("über 42 x2 ... —") == pytest.approx(2 / 5)


def test_stop_word_rule():
    keywords = "tokenizer, NLP, huggingface, BPE, WordPiece, Unigram, Rust, Python, fast, training"
    assert stop_word_count(keywords) == 0 and not _passes("stop words", keywords)
    assert stop_word_count(HAMLET) >= 5


def test_repetition_rules():
    repeated = "\n".join([HAMLET] * 3)
    lines, chars = duplicate_line_fraction(repeated)
    assert lines == pytest.approx(2 / 3) and chars == pytest.approx(2 / 3)
    assert not _passes("gopher: duplicate lines", repeated) and not _passes("chars in duplicate lines", repeated)
    assert duplicate_ngram_char_fraction(repeated, 10) == 1.0 and not _passes("repeated 5-10-gram", repeated)
    chant = "to be or not to be " * 40
    assert top_ngram_char_fraction(chant, 2) > 0.2 and not _passes("top 2/3/4-gram", chant)
    assert duplicate_ngram_char_fraction(HAMLET, 5) == 0.0


def test_language_heuristic():
    ratios = {lang: english_stop_word_ratio(text) for lang, text in UDHR_1.items()}
    assert ratios["en"] > 0.4 and max(ratios["fr"], ratios["de"], ratios["es"]) < 0.05
    assert english_stop_word_ratio(HAMLET) > 0.4
    lang = next(s for s in default_steps() if s.name.startswith("language"))
    assert lang.fn(UDHR_1["en"]) and not any(lang.fn(UDHR_1[x]) for x in ("fr", "de", "es"))


# ---------------------------------------------------------------- HTML, Unicode, whitespace


def test_html_page_to_text():
    page = ("<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style>"
            "<script>if (a < b) { x(); }</script></head><body><nav><a href='/'>Home</a></nav>"
            "<h1>Caf&eacute; &amp; R&#233;sum&eacute;</h1><p>First   paragraph\nwith <b>bold</b>.</p>"
            "<ul><li>one</li><li>two</li></ul><pre>  keep   this</pre><footer>(c) 2024</footer></body></html>")
    assert html_to_text(page) == "Café & Résumé\n\nFirst paragraph with bold.\n\n- one\n- two\n\n  keep   this"
    assert "Home" in html_to_text(page, drop_boilerplate=False) and "(c) 2024" in html_to_text(page, False)


def test_markdown_with_inline_html_keeps_its_text_and_layout():
    out = strip_html(HTTPX_HEAD)
    assert "<p" not in out and "<img" not in out and "<strong>" not in out
    assert "HTTPX - A next-generation HTTP client for Python." in out
    assert "<Response [200 OK]>" in out                        # not a tag: kept
    assert out.endswith("Install HTTPX using pip:")            # the <head> inside a code example hides nothing
    assert "```pycon\n>>> r = httpx.get('https://www.example.org/')" in out
    assert strip_html(HAMLET) == HAMLET


def test_unicode_normalisation():
    assert normalize_unicode("cafe\u0301") == "café" and len(normalize_unicode("cafe\u0301")) == 4
    assert normalize_unicode("\ufb01le \uff21\uff22 x\u00b2 10\u00a0km \u216b") == "file AB x2 10 km XII"
    assert normalize_unicode("\ufb01le", form="NFC") == "\ufb01le"
    invisible = "zero\u200bwidth soft\u00adhyphen\x07bell\ttab\nline"
    assert normalize_unicode(invisible) == "zerowidth softhyphenbell\ttab\nline"
    with pytest.raises(ValueError, match="normal form"):
        normalize_unicode("x", form="NFX")


def test_whitespace_normalisation():
    text = "  def f():\r\n\treturn  1   \n\n\n\nnext\u00a0\u2003line  \r\n\n"
    assert normalize_whitespace(text) == "  def f():\n    return 1\n\nnext line"


# ---------------------------------------------------------------- PII


def test_pii_masking_catches_emails_phones_ips():
    text = ("Mail numpy-team@googlegroups.com or jane.doe+news@example.co.uk; call +1-202-555-0143, "
            "+44 20 7946 0958, (555) 123-4567 or 555.123.4567. " + PSUTIL_CONNECTIONS
            + " IPv6: 2001:db8::8a2e:370:7334, fe80::c685:8ff:fe45:641, ::1.")
    masked, counts = mask_pii(text)
    assert counts == {"EMAIL": 2, "PHONE": 4, "IP": 5}
    for secret in ("googlegroups", "example.co.uk", "555", "7946", "10.0.0.1", "93.186", "2001:db8", "fe80"):
        assert secret not in masked, secret
    assert masked.startswith("Mail <EMAIL> or <EMAIL>; call <PHONE>, <PHONE>, <PHONE> or <PHONE>.")
    assert {kind for kind, _ in find_pii(text)} == {"EMAIL", "PHONE", "IP"}


def test_pii_masking_leaves_lookalikes_alone():
    text = ("Require brotlicffi >= 1.2.1.0, version 1.2.3.4.5, 999.1.1.1, on 2024-01-15 at 12:30:45; "
            "ISBN 978-3-16-148410-0; std::vector; a::b; numbers 100 200 300 400; @decorator; user@localhost")
    assert mask_pii(text) == (text, {})


# ---------------------------------------------------------------- the pipeline


def test_pipeline_reports_what_each_rule_removed():
    docs = [Document("hamlet", HAMLET), Document("babel", BABEL), Document("badges", TQDM_BADGES + "\n" + HAMLET),
            Document("french", UDHR_1["fr"] * 5), Document("mail", HAMLET + "\nWrite to someone@example.org")]
    steps = [transform("lower", str.lower), keep_if("long", lambda t: len(t.split()) >= 50),
             keep_if("english", lambda t: english_stop_word_ratio(t) >= 0.15),
             keep_if("no badges", lambda t: "image::" not in t)]
    kept, report = run_pipeline(docs, steps)
    assert [d.id for d in kept] == ["hamlet", "mail"] and kept[0].text == HAMLET.lower()
    assert report.dropped == {"long": ["babel"], "english": ["french"], "no badges": ["badges"]}
    assert [(s.name, s.docs_in, s.removed, s.fails_alone) for s in report.steps[1:]] == [
        ("long", 5, 1, 1), ("english", 4, 1, 1), ("no badges", 3, 1, 1)]
    assert report.steps[0].changed == 5 and report.docs_in == 5 and report.docs_out == 2
    assert "kept 2 of 5 documents" in report.table()
    # reordering the filters moves the blame, not the result
    kept2, report2 = run_pipeline(docs, [steps[0], steps[3], steps[2], steps[1]])
    assert [d.id for d in kept2] == ["hamlet", "mail"] and report2.dropped["long"] == ["babel"]


def test_fails_alone_counts_overlapping_rules():
    docs = [Document(str(i), t) for i, t in enumerate([BABEL, "Kurz. " * 3, HAMLET])]
    _, report = run_pipeline(docs, [keep_if("long", lambda t: len(t.split()) >= 50),
                                    keep_if("english", lambda t: english_stop_word_ratio(t) > 0.2)])
    assert [(s.removed, s.fails_alone) for s in report.steps] == [(2, 2), (0, 1)]


def test_bad_steps_are_clear_errors():
    with pytest.raises(ValueError, match="kind must be"):
        Step("x", "map", str.lower)
    with pytest.raises(TypeError, match="callable"):
        Step("x", "filter", 3)


def test_default_pipeline_on_real_web_text():
    web = load("web_text", verbose=False)
    kept, report = run_pipeline(web, default_steps())
    assert 0 < len(kept) < len(web)
    assert sum(s.removed for s in report.steps) == len(web) - len(kept)
    assert not any(find_pii(d.text) for d in kept)
    assert all("<p align" not in d.text for d in kept)
    assert [d.id for d in clean_documents(web)] == [d.id for d in kept]
