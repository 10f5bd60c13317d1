"""Chapter 1's positional-encoding experiment from the command line (notebook 04 runs a small version of it).

Tiny decoder-only models that differ only in their positional encoding -- learned absolute, sinusoidal (2017),
RoPE, none -- are trained on character-level Shakespeare at one context length and evaluated at longer ones.
Prints the table of validation loss per encoding and evaluation length, and saves it (JSON, CSV) with a plot.

    python ch01_foundations/positional_experiment.py                      # laptop defaults, a few minutes on CPU
    python ch01_foundations/positional_experiment.py --device cuda --width 256 --layers 4 --heads 8 \\
        --train-context 256 --eval-contexts 256 512 1024 2048 --steps 5000

The library code is in shared/pe_experiment.py (exported from ch01_foundations/04_positional_encodings.ipynb).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from shared.device import pick_device
from shared.pe_experiment import ENCODINGS, ExperimentConfig, format_table, load_char_data, run_experiment, save_results
from shared.plotting import use_book_style
from shared.registry import SourceUnavailable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    parser.add_argument("--source", default="shakespeare",
                        help='registry source of text: "shakespeare" (pinned, the notebook\'s data; default) or '
                             '"tiny_shakespeare" (online)')
    parser.add_argument("--encodings", nargs="+", choices=ENCODINGS, default=list(ENCODINGS),
                        help="positional encodings to compare (default: all four)")
    parser.add_argument("--train-context", "--context", type=int, default=64,
                        help="context length the models are trained at (default: 64)")
    parser.add_argument("--eval-contexts", nargs="+", type=int, default=[64, 128, 256, 512],
                        help="context lengths to evaluate at (default: 64 128 256 512)")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model (default: 600)")
    parser.add_argument("--width", type=int, default=64, help="model width d_model (default: 64)")
    parser.add_argument("--layers", type=int, default=2, help="Transformer blocks (default: 2)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (default: 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    parser.add_argument("--eval-tokens", type=int, default=16384,
                        help="validation characters scored at every evaluation length (default: 16384)")
    parser.add_argument("--train-chars", type=int, default=2_000_000,
                        help="characters of training text to keep (default: 2,000,000; 0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and batches (default: 0)")
    parser.add_argument("--out", default="runs/pe_experiment",
                        help="folder for results.json, results.csv and pe_experiment.png (default: runs/pe_experiment)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.train_chars < 0:
        raise SystemExit(f"error: --train-chars must be 0 (all) or positive, got {args.train_chars}")
    try:               # bad values get one line naming the flag, before any data is read or any step is taken
        device = pick_device(args.device)
        cfg = ExperimentConfig(encodings=tuple(args.encodings), train_context=args.train_context,
                               eval_contexts=tuple(args.eval_contexts), steps=args.steps, width=args.width,
                               layers=args.layers, heads=args.heads, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, eval_tokens=args.eval_tokens)
    except (ValueError, RuntimeError) as e:
        message = str(e)
        for field in ("train_context", "batch_size", "eval_tokens", "steps", "width", "layers", "heads", "lr"):
            message = message.replace(field, "--" + field.replace("_", "-"))
        raise SystemExit(f"error: {message}") from None
    torch.manual_seed(args.seed)
    try:
        data = load_char_data(args.source, max_train_chars=args.train_chars or None)
    except (KeyError, SourceUnavailable) as e:
        raise SystemExit(f"error: --source: {e}") from None
    print(f"data: {data.description}; {len(data.train):,} train / {len(data.val):,} val characters, "
          f"vocabulary {len(data.vocab)}")
    print(f"device: {device}; config: {cfg}")
    start = time.perf_counter()
    result = run_experiment(cfg, data, device=device, progress=True)
    seconds = time.perf_counter() - start
    print(f"\nvalidation loss (nats per character); trained at T={cfg.train_context}; "
          "n/a = a learned table has no rows for those positions")
    print(format_table(result))
    use_book_style()
    for path in save_results(result, args.out):
        print(f"wrote {path}")
    print(f"wall time: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
