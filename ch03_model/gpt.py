"""Chapter 3's command line: sample text from a GPT, or measure the memory/time of its training forward pass.

    python ch03_model/gpt.py generate --preset laptop --prompt "ROMEO:" --max-new-tokens 100 --stream
    python ch03_model/gpt.py generate --checkpoint runs/train --temperature 0.8 --top-p 0.95   # chapter 4's run
    python ch03_model/gpt.py generate --checkpoint nanogpt_ckpt.pt --preset gpt2          # a bare state dict
    python ch03_model/gpt.py generate --hf gpt2 --prompt "Hello, I'm a language model,"   # needs the network once
    python ch03_model/gpt.py memory --device cuda --preset gpt2 --seq-lens 256 512 1024 --batch 8

The library code lives in shared/ (model: notebook 02, memory: notebook 03, generation: notebook 04,
hf_interop: notebook 05; checkpoints: chapter 4, notebook 01); this file only parses arguments.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from shared.device import pick_device
from shared.model import GPT, PRESETS, GPTConfig


# ---------------------------------------------------------------------------------------------- loading a model
def build_model(args) -> GPT:
    if args.checkpoint:
        # one home for the checkpoint format (chapter 4): ours, or a bare / nanoGPT state dict shaped by --preset
        from shared.checkpoint import load_model
        return load_model(args.checkpoint, args.preset)
    if args.hf:
        from shared.hf_interop import from_pretrained
        return from_pretrained(args.hf)
    preset = args.preset or "laptop"
    print(f"warning: no --checkpoint or --hf given: preset {preset!r} with RANDOM weights, "
          "so the text will be noise", file=sys.stderr)
    torch.manual_seed(args.seed)
    return GPT(GPTConfig.from_preset(preset))


# ---------------------------------------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    from shared.bpe import check_tokenizer_fits, get_encoding
    from shared.generation import generate, stream_text, stream_tokens

    device = pick_device(args.device)
    model = build_model(args).to(device).eval()
    enc = get_encoding(args.tokenizer)
    check_tokenizer_fits(enc, model.config.vocab_size)
    eot = enc.eot_token
    prompt = enc.encode(args.prompt, allowed_special="all") if args.prompt else [eot]
    if not prompt:
        prompt = [eot]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    stops = [] if args.no_stop else [eot]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop_tokens=stops,
                   use_cache=not args.no_cache, generator=generator)
    for sample in range(args.num_samples):
        if args.num_samples > 1:
            print(f"---------- sample {sample + 1}")
        start = time.perf_counter()
        if args.stream:
            print(args.prompt, end="", flush=True)
            seen = []                                   # the token ids, to count them

            def row_tokens():
                for step in stream_tokens(model, idx, args.max_new_tokens, **options):
                    seen.append(int(step[0]))               # batch of one: row 0
                    yield seen[-1]

            for piece in stream_text(row_tokens(), enc.decode_single_token_bytes):
                print(piece, end="", flush=True)
            print()
            n = len(seen)
        else:
            out = generate(model, idx, args.max_new_tokens, **options)
            n = out.size(1) - idx.size(1)
            print(enc.decode(out[0].tolist()))
        seconds = time.perf_counter() - start
        print(f"[{n} tokens in {seconds:.2f} s: {n / seconds:.1f} tokens/s on {device}, "
              f"{'with' if not args.no_cache else 'without'} the KV cache]", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- memory
def cmd_memory(args) -> int:
    from shared.memory import measure_forward_backward, results_table

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    overrides = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}
    config = GPTConfig.from_preset(args.preset, block_size=max(max(args.seq_lens), PRESETS[args.preset].block_size),
                                   **overrides)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"preset {args.preset} (n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
          f"vocab_size={config.vocab_size}), batch {args.batch}, device {device} ({name}), torch {torch.__version__}")
    results = []
    for forward in args.configs:
        for seq_len in args.seq_lens:
            try:
                results.append(measure_forward_backward(config, forward, seq_len, args.batch, device, args.repeats))
            except torch.OutOfMemoryError:
                print(f"{forward} at seq_len {seq_len}: out of memory", file=sys.stderr)
                torch.cuda.empty_cache()
    columns = ("saved_bytes", "formula_bytes", "ratio", "parameter_cast_bytes")
    if device.type == "cuda":
        columns += ("peak_bytes",)
    if args.repeats > 0:
        columns += ("seconds",)
    print(results_table(results, columns))
    print("saved = bytes autograd keeps for backward (exact); formula = shared.memory.model_activation_bytes; "
          "CUDA peak = torch.cuda.max_memory_allocated above the weights; time = median of --repeats steps")
    return 0


# ---------------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    from shared.memory import FORWARD_CONFIGS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="sample text from a checkpoint, a Hugging Face GPT-2 or a preset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = g.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint of chapter 4's training (file, or its run folder), or a "
                                             "state dict / nanoGPT checkpoint (then name its shape with --preset)")
    source.add_argument("--hf", metavar="NAME_OR_FOLDER",
                        help="a Hugging Face GPT-2 ('gpt2', 'gpt2-medium', ... or a save_pretrained folder)")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="model shape of a checkpoint without a config, or of random weights when no checkpoint is "
                        "given (default then: laptop)")
    g.add_argument("--tokenizer", default="gpt2", help="'gpt2' or the path of a BPE file saved in chapter 2")
    g.add_argument("--prompt", default="", help="text to continue (empty: start from <|endoftext|>)")
    g.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (fewer if <|endoftext|> comes)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy decoding")
    g.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set with mass >= p")
    g.add_argument("--no-stop", action="store_true", help="do not stop at <|endoftext|>")
    g.add_argument("--num-samples", type=int, default=1, help="independent samples of the same prompt")
    g.add_argument("--seed", type=int, default=0, help="seeds the sampler (and the random weights of a preset)")
    g.add_argument("--stream", action="store_true", help="print the text token by token as it is generated")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow; same tokens)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("memory", help="saved activations, CUDA peak memory and time of forward+backward per "
                                      "configuration and sequence length",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--preset", default="laptop", choices=list(PRESETS), help="model shape (random weights)")
    m.add_argument("--vocab-size", type=int, default=None,
                   help="override the vocabulary (e.g. 256 to study the blocks without the big head)")
    m.add_argument("--configs", nargs="+", default=list(FORWARD_CONFIGS), choices=list(FORWARD_CONFIGS),
                   help="forward configurations (shared.memory.FORWARD_CONFIGS)")
    m.add_argument("--seq-lens", nargs="+", type=int, default=[128, 256, 512, 1024], help="sequence lengths")
    m.add_argument("--batch", type=int, default=1, help="sequences per step")
    m.add_argument("--repeats", type=int, default=5, help="timed steps (the median is reported); 0 = memory only")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    m.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs (default: torch's)")
    m.set_defaults(func=cmd_memory)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:           # the library's clear errors, without a traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
