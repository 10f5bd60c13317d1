"""The chat app (ch05_evaluation/chat_app.py): the real app in its own process on a free localhost port, driven by
gradio_client (a real client): a prompt streams a reply in several updates, bad input gets a message in the chat,
and Ctrl-C (SIGINT) or `kill` (SIGTERM) stops it cleanly, leaving no process behind. Start-up errors (a missing or
corrupt checkpoint or adapter, a tokenizer of another model) are one line."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from shared.bpe import BPETokenizer
from shared.checkpoint import save_checkpoint
from shared.lora import apply_lora, save_lora
from shared.model import GPT, GPTConfig
from shared.registry import load
from shared.sft import add_special_tokens

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "ch05_evaluation" / "chat_app.py"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small tuned-model layout as notebook 08 writes it: extended base, a LoRA adapter; the tokenizer both as
    notebook 05 saves it (base_tokenizer.json, no section tokens) and extended (tokenizer.json)."""
    folder = tmp_path_factory.mktemp("sft")
    text = next(d.text for d in load("python_source") if d.id == "textwrap.py")
    tokenizer = BPETokenizer.train(text, 300)
    tokenizer.save(folder / "base_tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32))
    tokenizer = add_special_tokens(model, tokenizer)
    tokenizer.save(folder / "tokenizer.json")
    save_checkpoint(folder / "base", model=model, step=0)
    apply_lora(model, rank=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)                                # a trained-looking adapter, not the zero init
    save_lora(model, folder / "lora.safetensors")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}:\n{log.read_text(encoding='utf-8')}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"the app did not answer on {url} within {timeout} s:\n{log.read_text(encoding='utf-8')}")


def session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def app(served, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    argv = [sys.executable, str(APP), "--checkpoint", str(served / "base"), "--adapter",
            str(served / "lora.safetensors"), "--tokenizer", str(served / "tokenizer.json"), "--port", str(port),
            "--seed", "0", "--device", "cpu"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "no_proxy": "127.0.0.1,localhost",
           "NO_PROXY": "127.0.0.1,localhost"}
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)           # its own session: we can check nothing is left
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(proc, url, log)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client
    return Client(app[1], verbose=False)


def test_a_prompt_streams_a_reply(client):
    job = client.submit("Return the larger of two numbers.", 0.7, 50, 0.95, 24, api_name="/chat")
    updates = list(job)                                           # every partial reply, as it streamed
    assert len(updates) > 1
    assert all(isinstance(u, str) for u in updates)
    assert all(b.startswith(a) for a, b in zip(updates, updates[1:]))     # each update extends the last
    assert updates[-1] and not updates[-1].startswith("⚠️")


@pytest.mark.parametrize("settings, message", [
    ((-1, 50, 0.95, 20), "temperature must be between 0"),
    ((0.7, -3, 0.95, 20), "top-k must be a whole number"),
    ((0.7, 50, 1.5, 20), "top-p must be in (0, 1]"),
    ((0.7, 50, 0.95, 0), "max new tokens must be a whole number >= 1"),
    ((0.7, 50, 0.95, 100_000), "max new tokens is at most 1000"),
])
def test_invalid_settings_get_a_message(client, settings, message):
    reply = client.predict("Hello.", *settings, api_name="/chat")
    assert reply.startswith("⚠️") and message in reply


def test_empty_and_huge_prompts_get_a_message(client):
    assert "Please type a message" in client.predict("   ", 0.7, 50, 0.95, 20, api_name="/chat")
    reply = client.predict("word " * 2_000, 0.7, 50, 0.95, 20, api_name="/chat")
    assert reply.startswith("⚠️") and "this app takes at most 64" in reply           # block_size 128 - 64


def _outside_address() -> str | None:
    """This machine's address on its main network interface (a UDP "connect" sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_app_binds_to_localhost_only(app):
    proc, url, log = app
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no network interface besides loopback")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((address, port)) != 0, f"the app answers on {address}:{port}, not only on 127.0.0.1"


def test_the_server_shuts_down_cleanly(app, client):
    proc, url, log = app
    assert client.predict("Hi.", 0, 0, 1, 4, api_name="/chat")  # still serving (greedy, no filters)
    proc.send_signal(signal.SIGINT)                              # Ctrl-C
    assert proc.wait(timeout=30) == 0, log.read_text(encoding="utf-8")
    deadline = time.monotonic() + 10
    while session_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session_alive(proc.pid), "a process of the app's session is still running"
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


# ---------------------------------------------------------------- start-up errors: one line, no server


def _load_app_module():
    spec = importlib.util.spec_from_file_location("chat_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupt checkpoint", "corrupt adapter", "wrong tokenizer",
                                  "bad port"])
def test_startup_errors_are_one_line(case, served, tmp_path, capsys):
    args = ["--checkpoint", str(served / "base"), "--tokenizer", str(served / "tokenizer.json")]
    expected = {"missing checkpoint": "no such checkpoint", "corrupt checkpoint": "not a torch.save archive",
                "corrupt adapter": "corrupt LoRA adapter file",
                "wrong tokenizer": "pass the tokenizer the model was trained with",
                "bad port": "--port must be in"}[case]
    if case == "missing checkpoint":
        args[1] = str(tmp_path / "nothing.pt")
    elif case == "corrupt checkpoint":
        (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
        args[1] = str(tmp_path / "broken.pt")
    elif case == "corrupt adapter":
        data = (served / "lora.safetensors").read_bytes()
        (tmp_path / "lora.safetensors").write_bytes(data[: len(data) // 2])
        args += ["--adapter", str(tmp_path / "lora.safetensors")]
    elif case == "wrong tokenizer":
        args[3] = "gpt2"                                         # 50,257 tokens for a model with ~300 rows
    else:
        args += ["--port", "70000"]
    assert _load_app_module().main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("chat_app.py: error: ") and expected in err, err


def test_a_tokenizer_file_without_the_section_tokens_gets_the_ids_the_model_was_tuned_with(served):
    """Notebook 08's commands serve with notebook 05's tokenizer file, which lacks the section tokens: the app adds
    them with the same ids add_special_tokens gave the tuned model, and uses the instruction format."""
    from shared.bpe import get_encoding
    from shared.sft import SFT_TOKENS, special_tokens
    app = _load_app_module()
    base_file, extended_file = served / "base_tokenizer.json", served / "tokenizer.json"
    assert not set(SFT_TOKENS) & set(special_tokens(get_encoding(str(base_file))))
    args = app.parse_args(["--checkpoint", str(served / "base"), "--tokenizer", str(base_file), "--device", "cpu"])
    try:
        model, tokenizer, chat_format = app.load_assistant(args)
    finally:
        torch.set_grad_enabled(True)                 # load_assistant switches gradients off for the serving process
    assert chat_format == "sft" and tokenizer.n_vocab == model.config.vocab_size
    assert special_tokens(tokenizer) == special_tokens(get_encoding(str(extended_file)))


# ---------------------------------------------------------------- the prompt: earlier turns packed before the new one


def test_the_prompt_packs_earlier_turns_newest_first_within_the_cap(served):
    from shared.bpe import get_encoding
    from shared.sft import END, prompt_ids, special_tokens
    app = _load_app_module()
    tokenizer = get_encoding(str(served / "tokenizer.json"))
    end = special_tokens(tokenizer)[END]
    history = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
               {"role": "user", "content": [{"type": "text", "text": "second question"}]},
               {"role": "assistant", "content": "second answer"}]
    turn = lambda q, a: prompt_ids(tokenizer, q) + tokenizer.encode_ordinary(a) + [end]
    new = prompt_ids(tokenizer, "third")
    both = turn("first question", "first answer") + turn("second question", "second answer") + new
    assert app.build_prompt(tokenizer, "sft", "third", history, limit=len(both)) == both
    only_last = turn("second question", "second answer") + new            # one token short: the oldest goes
    assert app.build_prompt(tokenizer, "sft", "third", history, limit=len(both) - 1) == only_last
    assert app.build_prompt(tokenizer, "sft", "third", history, limit=len(new)) == new
    assert app.build_prompt(tokenizer, "raw", "third", history, limit=10) == tokenizer.encode_ordinary("third")
    with pytest.raises(ValueError, match="this app takes at most 2"):
        app.build_prompt(tokenizer, "sft", "third", [], limit=2)
