"""The book's whole pipeline in one command: prepare data -> train with torchrun -> evaluate -> report JSON + plots.

    python ch05_evaluation/pipeline.py                          # laptop preset, in ch05_evaluation/runs/final-laptop
    python ch05_evaluation/pipeline.py --preset laptop --out runs/final
    python ch05_evaluation/pipeline.py --preset laptop --out runs/final --mmlu-limit all    # all 14,042 questions
    python ch05_evaluation/pipeline.py --preset gpt2-124m-gpu --out runs/gpt2               # one 8-GPU node
    python ch05_evaluation/pipeline.py --preset laptop --out runs/final --stop-after train  # base model only

Stages (shared/pipeline.py, chapter 5 notebook 05): prepare (chapter 2's registry, cleaning, dedup and BPE over a
mix of Shakespeare, web text and Python source: OUT/data), train (ch04_distributed/train.py under torchrun: OUT/train),
evaluate (ch05_evaluation/evaluate.py: held-out bits per byte, MMLU zero- and few-shot, HumanEval pass@1/pass@10:
OUT/eval), report (OUT/report/report.json, bits_per_byte.png, results.png). Each stage ends by writing its
done.json; run the same command again after an interruption and finished stages are skipped (training resumes from
its latest checkpoint). A run directory made with other data or training settings is refused, never overwritten.
"""
from __future__ import annotations

import argparse
import sys


def limit(text: str) -> int | None:
    if text == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    from shared.pipeline import PIPELINE_PRESETS, STAGES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="laptop", choices=list(PIPELINE_PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in PIPELINE_PRESETS.items()))
    p.add_argument("--out", default=None, help="run directory (default: ch05_evaluation/runs/final-<preset>)")
    p.add_argument("--stop-after", default="report", choices=STAGES, help="last stage to run (default: report)")
    p.add_argument("--nproc", type=int, default=None, help="torchrun ranks (default: the preset's)")
    p.add_argument("--device", default=None, help="evaluation device (default: the preset's)")
    p.add_argument("--mmlu-limit", type=limit, default=argparse.SUPPRESS,
                   help="MMLU questions, or 'all' (default: the preset's)")
    p.add_argument("--humaneval-limit", type=limit, default=argparse.SUPPRESS, help="HumanEval problems, or 'all'")
    p.add_argument("--humaneval-samples", type=int, default=None, help="completions per problem")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from shared.files import FileFormatError
    from shared.pipeline import run_pipeline
    overrides = {k: v for k, v in (("nproc", args.nproc), ("device", args.device),
                                   ("humaneval_samples", args.humaneval_samples)) if v is not None}
    overrides.update({k: getattr(args, k) for k in ("mmlu_limit", "humaneval_limit") if hasattr(args, k)})
    if any(isinstance(v, int) and v < 1 for v in overrides.values()):
        print("pipeline.py: error: --nproc and --humaneval-samples must be positive", file=sys.stderr)
        return 2
    try:
        done = run_pipeline(args.out, args.preset, stop_after=args.stop_after, **overrides)
    except (RuntimeError, FileFormatError, OSError, ValueError) as e:      # PipelineError, SourceUnavailable, ...
        print(f"pipeline.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pipeline.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"pipeline.py: done up to {args.stop_after} ({', '.join(done)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
