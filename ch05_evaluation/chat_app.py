"""Chat with a checkpoint in the browser: a Gradio app with streamed tokens and chapter 3's sampling controls.

    python ch05_evaluation/chat_app.py --checkpoint ch05_evaluation/runs/sft/full \
        --tokenizer ch05_evaluation/runs/final-laptop/data/tokenizer.json
    python ch05_evaluation/chat_app.py --checkpoint ch05_evaluation/runs/sft/base \
        --adapter ch05_evaluation/runs/sft/lora.safetensors \
        --tokenizer ch05_evaluation/runs/final-laptop/data/tokenizer.json

Serves any of our checkpoints (a file or a run folder; chapter 4's training runs, notebook 05's base model, notebook
08's tuned models), with or without a LoRA adapter (notebook 06). A tuned model has rows for notebook 08's section
tokens; its base tokenizer file (notebook 05's) lacks them, so the app adds them with the same ids notebook 08 gave
them. Such a model gets the instruction format, earlier turns packed before the new one as in training; any other
model continues the text it is given.
It binds to 127.0.0.1 unless --host says otherwise, caps the prompt (tokens) and the generation (seconds), and
answers bad input (an empty or too long message, invalid settings) with a message in the chat. A missing or
broken checkpoint, tokenizer or adapter stops it at start-up with one line. Library code: shared/sft.py
(notebook ch05_evaluation/08_instruction_tuning.ipynb) and shared/generation.py (chapter 3).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # no calls home from a local app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a checkpoint as a Gradio chat with streamed tokens.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="our checkpoint file or run folder (latest.json)")
    p.add_argument("--tokenizer", default="gpt2", help='"gpt2" or a tokenizer file written by BPETokenizer.save')
    p.add_argument("--adapter", default=None, help="a LoRA adapter file (shared.lora.save_lora) for the checkpoint")
    p.add_argument("--preset", default=None, help="model shape, for a bare state dict without a config")
    p.add_argument("--format", choices=("auto", "sft", "raw"), default="auto",
                   help="sft: the instruction format; raw: continue the text; auto: sft if the tokenizer has it")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the app to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longest prompt in tokens (default: the model's context minus 64)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest time one reply may take")
    p.add_argument("--max-new-tokens", type=int, default=200, help="default of the UI's token limit")
    p.add_argument("--max-new-tokens-cap", type=int, default=1000, help="largest token limit a user may set")
    p.add_argument("--seed", type=int, default=None, help="seed the sampler (replies then repeat)")
    return p.parse_args(argv)


class StartupError(Exception):
    """Something the user must fix before the app can start; printed as one line."""


def load_assistant(args: argparse.Namespace):
    """(model, tokenizer, format) from the command line; StartupError with one line for anything wrong."""
    import torch

    from shared.bpe import TokenizerFileError, check_tokenizer_fits, get_encoding, vocab_size_of
    from shared.checkpoint import CheckpointError, load_model
    from shared.device import pick_device
    from shared.lora import LoRAFileError, load_lora, merge_lora
    from shared.sft import SFT_TOKENS, extend_tokenizer, special_tokens

    if args.max_seconds <= 0 or args.max_new_tokens < 1 or args.max_new_tokens_cap < args.max_new_tokens:
        raise StartupError("need --max-seconds > 0 and 1 <= --max-new-tokens <= --max-new-tokens-cap")
    if not 0 < args.port < 65536:
        raise StartupError(f"--port must be in 1..65535, got {args.port}")
    try:
        device = pick_device(args.device)
        model = load_model(args.checkpoint, preset=args.preset)
        tokenizer = get_encoding(args.tokenizer)
    except (CheckpointError, TokenizerFileError, ValueError) as e:
        raise StartupError(str(e)) from None
    if vocab_size_of(tokenizer) < model.config.vocab_size and not set(SFT_TOKENS) <= set(special_tokens(tokenizer)):
        tokenizer = extend_tokenizer(tokenizer)        # a tuned model's extra rows: the same ids notebook 08 gave
    try:
        check_tokenizer_fits(tokenizer, model.config.vocab_size)
    except ValueError as e:
        raise StartupError(f"{args.tokenizer}: {e}") from None
    if args.adapter:
        try:
            load_lora(model, args.adapter)
        except LoRAFileError as e:
            raise StartupError(str(e)) from None
        merge_lora(model)                              # one matmul per layer again: serving speed of the base
    has_sft = set(SFT_TOKENS) <= set(special_tokens(tokenizer))
    if args.format == "sft" and not has_sft:
        raise StartupError(f"--format sft: the tokenizer {args.tokenizer} has no {', '.join(SFT_TOKENS)} tokens")
    chat_format = args.format if args.format != "auto" else ("sft" if has_sft else "raw")
    limit = args.max_prompt_tokens or max(1, model.config.block_size - 64)
    if not 0 < limit < model.config.block_size:
        raise StartupError(f"--max-prompt-tokens must be in 1..{model.config.block_size - 1} "
                           f"(the model's context is {model.config.block_size})")
    args.max_prompt_tokens = limit
    torch.set_grad_enabled(False)
    return model.to(device).eval(), tokenizer, chat_format


def build_prompt(tokenizer, chat_format: str, message: str, history: list, limit: int) -> list[int]:
    """The prompt's ids: the new message, after as many earlier turns as fit in `limit` tokens (oldest dropped).
    ValueError (shown in the chat) when the message alone is too long."""
    from shared.sft import END, prompt_ids, special_tokens
    if chat_format == "raw":
        ids = tokenizer.encode_ordinary(message)
        if len(ids) > limit:
            raise ValueError(f"your message is {len(ids):,} tokens; this app takes at most {limit:,}")
        return ids
    ids = prompt_ids(tokenizer, message)
    if len(ids) > limit:
        raise ValueError(f"your message is {len(ids):,} tokens; this app takes at most {limit:,}")
    end = special_tokens(tokenizer)[END]
    turns = _pairs(history)
    for user, assistant in reversed(turns):           # newest first, while they fit
        turn = prompt_ids(tokenizer, user) + tokenizer.encode_ordinary(assistant) + [end]
        if len(turn) + len(ids) > limit:
            break
        ids = turn + ids
    return ids


def _pairs(history: list) -> list[tuple[str, str]]:
    """Gradio's message history ({"role", "content"} dicts) as (user, assistant) text pairs."""
    pairs, user = [], None
    for m in history or []:
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if isinstance(content, list):                 # Gradio 6 may send [{"type": "text", "text": ...}]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            continue
        if role == "user":
            user = content
        elif role == "assistant" and user is not None:
            pairs.append((user, content))
            user = None
    return pairs


def _number(value, name: str, integer: bool = False):
    """A UI number as int/float (None stays None); ValueError with a readable message otherwise."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


def make_responder(model, tokenizer, chat_format: str, args: argparse.Namespace):
    """The ChatInterface function: (message, history, temperature, top_k, top_p, max_new_tokens) -> yields the
    reply so far. Every problem becomes a message in the chat; nothing is raised to Gradio."""
    import torch

    from shared.sft import END, check_sampling, special_tokens, stream_reply
    stop = [special_tokens(tokenizer)[END]] if END in special_tokens(tokenizer) else []
    generator = torch.Generator(device=next(model.parameters()).device)
    if args.seed is not None:
        generator.manual_seed(args.seed)

    def respond(message, history, temperature, top_k, top_p, max_new_tokens):
        try:
            if not isinstance(message, str) or not message.strip():
                yield "⚠️ Please type a message."
                return
            if len(message) > 100 * args.max_prompt_tokens:           # don't even tokenize a pasted book
                raise ValueError(f"your message is {len(message):,} characters; this app takes at most "
                                 f"{args.max_prompt_tokens:,} tokens")
            temperature = _number(temperature, "temperature")
            top_k = _number(top_k, "top-k", integer=True)
            top_p = _number(top_p, "top-p")
            max_new_tokens = _number(max_new_tokens, "max new tokens", integer=True)
            if temperature is None or max_new_tokens is None:
                raise ValueError("temperature and max new tokens need a value")
            top_k = None if top_k == 0 else top_k              # 0 in the UI: no top-k limit
            problem = check_sampling(temperature, top_k, top_p, max_new_tokens)
            if problem is None and max_new_tokens > args.max_new_tokens_cap:
                problem = f"max new tokens is at most {args.max_new_tokens_cap} here, got {max_new_tokens}"
            if problem:
                yield f"⚠️ {problem}."
                return
            ids = build_prompt(tokenizer, chat_format, message, history, args.max_prompt_tokens)
        except ValueError as e:
            yield f"⚠️ {e}."
            return
        reply, started = "", time.monotonic()
        try:
            for piece in stream_reply(model, tokenizer, ids, max_new_tokens, max_seconds=args.max_seconds,
                                      temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=stop,
                                      generator=generator):
                reply += piece
                yield reply
        except Exception as e:                                  # a reply that fails must not take the app down
            yield reply + f"\n\n⚠️ generation failed: {type(e).__name__}: {e}"
            return
        if time.monotonic() - started > args.max_seconds:
            yield reply + f"\n\n⚠️ stopped after the {args.max_seconds:g} s time limit."
        elif not reply:
            yield "(the model ended its reply at once)"

    return respond


AS_TYPED_CSS = ".as-typed .message * { font-family: var(--font-mono) !important; white-space: pre-wrap; }"


def build_app(model, tokenizer, chat_format: str, args: argparse.Namespace):
    """Chapter 3's sampling settings in a column on the left, the chat on the right; the endpoint is "/chat"."""
    import gradio as gr
    c = model.config
    described = (f"Checkpoint `{args.checkpoint}`" + (f" + LoRA adapter `{args.adapter}`" if args.adapter else "")
                 + f" — {model.num_params():,} parameters, context {c.block_size} tokens, "
                 + ("instruction format (notebook 08)" if chat_format == "sft" else "plain continuation")
                 + f". Prompts up to {args.max_prompt_tokens} tokens, replies up to {args.max_seconds:g} s.")
    with gr.Blocks(title="Chat with your model", analytics_enabled=False) as app:
        gr.Markdown(f"# Chat with your model\n{described}")
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                gr.Markdown("**Sampling** (chapter 3)")
                settings = [                   # plain numbers: a bad value reaches respond(), which explains it
                    gr.Number(value=0.7, label="temperature (0 = greedy)"),
                    gr.Number(value=50, label="top-k (0 = off)", precision=0),
                    gr.Number(value=0.95, label="top-p (1 = off)"),
                    gr.Number(value=args.max_new_tokens, label="max new tokens", precision=0),
                ]
            with gr.Column(scale=4):
                # the model's text as it wrote it: no Markdown, indentation kept, monospace (CSS at launch)
                chatbot = gr.Chatbot(render_markdown=False, height=520, elem_classes=["as-typed"])
                gr.ChatInterface(make_responder(model, tokenizer, chat_format, args), additional_inputs=settings,
                                 chatbot=chatbot, api_name="chat", cache_examples=False, analytics_enabled=False,
                                 examples=[["Return the larger of two numbers."], ["Remove a file if it exists."]])
    return app


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, tokenizer, chat_format = load_assistant(args)
    except StartupError as e:
        print(f"chat_app.py: error: {e}", file=sys.stderr)
        return 2
    app = build_app(model, tokenizer, chat_format, args)
    signal.signal(signal.SIGTERM, _interrupt)                  # `kill` stops it as cleanly as Ctrl-C
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    try:
        app.queue().launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False,
                           show_error=True, quiet=True, css=AS_TYPED_CSS)
    except OSError as e:                                        # the port is taken, or the address is not ours
        print(f"chat_app.py: error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
