"""Benchmark: data parallelism on 2 CPU ranks (gloo) against one process in the same run — tokens/s and scaling
efficiency, our NaiveDataParallel and BucketedDataParallel against torch's DistributedDataParallel (goal: bucketed
within 10% of torch), and the bytes all-reduced per step against the formula 4 bytes x parameters. Not a test: it
prints a table.

    .venv/bin/python tests/bench/bench_ddp.py                        # laptop preset, 5 repeats, the medians
    .venv/bin/python tests/bench/bench_ddp.py --preset tiny --seq-len 128 --batch 16

Each repeat launches ch04_distributed/ddp_demo.py under torchrun once per configuration, interleaved (so a busy
moment of a shared machine hits every configuration alike): 1 process with the bare model (the baseline, one
thread, as one device), then 2 ranks of one thread each with every wrapper on the same global batch. A launch
reports the median time of its steps after a warm-up step; the table shows the median over the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.parallel.runtime import run_torchrun_json       # noqa: E402

DEMO = ROOT / "ch04_distributed" / "ddp_demo.py"

CONFIGS = (("1 process", 1, "none"), ("2 ranks, naive (ours)", 2, "naive"),
           ("2 ranks, bucketed (ours)", 2, "bucketed"), ("2 ranks, torch DDP", 2, "torch"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="laptop", help="GPTConfig preset (default laptop)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="global batch in sequences (all ranks)")
    parser.add_argument("--steps", type=int, default=4, help="steps per launch; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    args = parser.parse_args(argv)
    if min(args.seq_len, args.batch, args.repeats) < 1 or args.steps < 2 or args.batch % 2:
        parser.error("--seq-len, --batch, --repeats must be positive, --steps at least 2, --batch even (2 ranks)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    common = ["--preset", args.preset, "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--steps",
              str(args.steps), "--warmup", "1", "--no-reference", "--bucket-cap-mb", str(args.bucket_cap_mb)]
    runs = {name: [] for name, _, _ in CONFIGS}
    for repeat in range(args.repeats):
        for name, nproc, impl in CONFIGS:
            runs[name].append(run_torchrun_json(DEMO, "--impl", impl, *common, nproc=nproc, timeout=1800))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    params = runs["1 process"][0]["params"]
    tokens = runs["1 process"][0]["tokens_per_step"]
    speed = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    base, torch_ddp = speed["1 process"], speed["2 ranks, torch DDP"]
    print(f"preset {args.preset}: {params:,} parameters; global batch {args.batch} x {args.seq_len} = {tokens:,} "
          f"tokens per step; gloo, one thread per process; median of {args.repeats} launches x "
          f"{args.steps - 1} timed steps")
    print(f"{'configuration':26s} {'tokens/s':>9s} {'vs 1 process':>13s} {'scaling eff.':>13s} {'vs torch DDP':>13s} "
          f"{'all-reduces/step':>17s} {'bytes/step':>12s} {'= 4 x N':>8s}")
    for name, nproc, impl in CONFIGS:
        r = runs[name][0]
        calls = sorted(set(c for run in runs[name] for c in run["calls"][1:]))   # after torch's bucket rebuild
        nbytes = sorted(set(b for run in runs[name] for b in run["bytes"]))
        ratio = speed[name] / base
        print(f"{name:26s} {speed[name]:9,.0f} {ratio:12.2f}x {ratio / nproc:12.0%} "
              f"{speed[name] / torch_ddp:12.0%} {'-' if impl == 'none' else str(calls):>17s} "
              f"{'-' if impl == 'none' else ', '.join(f'{b:,}' for b in nbytes):>12s} "
              f"{'-' if impl == 'none' else str(nbytes == [4 * params]):>8s}")
    gap = speed["2 ranks, bucketed (ours)"] / torch_ddp - 1
    # the two launches of one repeat run back to back, so their ratio is steadier than the ratio of the medians
    paired = statistics.median(b["tokens_per_s"] / t["tokens_per_s"] for b, t in
                               zip(runs["2 ranks, bucketed (ours)"], runs["2 ranks, torch DDP"])) - 1
    print(f"bucketed vs torch DDP: {gap:+.1%} (medians), {paired:+.1%} (median of the per-repeat ratios); "
          f"goal: within 10%: {paired >= -0.10}")
    per_launch = {name: [round(r["tokens_per_s"]) for r in rs] for name, rs in runs.items()}
    print("tokens/s of every launch:", per_launch)


if __name__ == "__main__":
    main()
