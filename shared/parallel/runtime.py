"""Starting and stopping torch.distributed under `torchrun` (hand-written plumbing, not generated).

`torchrun --nproc-per-node N script.py` starts N processes and tells each who it is through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init_distributed()` reads them, joins the process group
(gloo on CPU, NCCL on CUDA) with a bounded timeout, so a dead or stuck peer ends the job instead of hanging it,
and picks this rank's device. Run as a plain `python script.py`, it returns a one-process context without
starting anything, so the same script runs on a laptop and on a cluster.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from shared.device import pick_device
from shared.files import atomic_write


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: dist.ProcessGroup | None = None       # None: a single process, nothing to communicate

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, prints and writes checkpoints; the others stay quiet."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.group is not None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 300) -> DistributedContext:
    """Join the torchrun job this process belongs to (or return a one-process context when not under torchrun).

    device: "auto" gives each rank its own GPU (cuda:LOCAL_RANK) when there are GPUs, else the CPU.
    backend: default NCCL for CUDA, gloo otherwise. timeout_s bounds every collective: a peer that died or hangs
    makes the others fail after at most this long, with an error naming the collective."""
    if not launched_by_torchrun():
        return DistributedContext(device=pick_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=chosen if chosen.type == "cuda" else None)
    return DistributedContext(rank, world_size, local_rank, chosen, dist.group.WORLD)


def shutdown_distributed(ctx: DistributedContext) -> None:
    """Leave the process group. Collect garbage first: a DDP/FSDP object freed during the process's exit, after the
    group is gone, sometimes aborts the process ("terminate called without an active exception") after all work is
    done, which torchrun reports as a failure."""
    gc.collect()
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 300):
    """`with distributed("cpu", timeout_s=120) as ctx:` joins the job (init_distributed) and always leaves it
    (shutdown_distributed), also when the body raises."""
    ctx = init_distributed(device, backend, timeout_s)
    try:
        yield ctx
    finally:
        shutdown_distributed(ctx)


# ------------------------------------------------------------------ the chapter-4 demo scripts' common ends
def require_torchrun(script: str, nproc: int = 2) -> None:
    """A script that needs ranks, started as a plain `python script.py`, ends in one line saying how to run it."""
    if not launched_by_torchrun():
        raise SystemExit(f"run me under torchrun: python -m torch.distributed.run --nproc-per-node {nproc} {script}")


def add_out_argument(parser) -> None:
    """The `--out FILE` every demo takes: where rank 0 writes its results (run_torchrun_json reads them there)."""
    parser.add_argument("--out", type=Path, help="write rank 0's results here as JSON (default: print them)")


def add_model_arguments(parser, *, batch: int, seq_len: int, n_layer: int, n_head: int, n_embd: int, vocab: int,
                        batch_help: str = "global batch B (sequences per step, all ranks)") -> None:
    """The small GPT and batch every demo takes: --batch --seq-len --n-layer --n-head --n-embd --vocab."""
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    for flag, default in (("--seq-len", seq_len), ("--n-layer", n_layer), ("--n-head", n_head), ("--n-embd", n_embd),
                          ("--vocab", vocab)):
        parser.add_argument(flag, type=int, default=default)


def model_config_from_args(parser, args):
    """The GPTConfig of add_model_arguments' flags (block_size = --seq-len); an impossible shape or a batch size below
    one ends in one parser error line."""
    from shared.model import GPTConfig        # here, not at the top: the launcher half of this module needs no model

    if min(args.batch, args.seq_len) < 1:
        parser.error("--batch and --seq-len must be positive")
    try:
        return GPTConfig(vocab_size=args.vocab, block_size=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                         n_embd=args.n_embd)
    except ValueError as e:
        parser.error(str(e))


def write_result(result: dict, out: Path | None) -> None:
    """Rank 0's results as JSON: written atomically to `out`, or printed when there is none."""
    text = json.dumps(result, indent=1)
    if out:
        atomic_write(out, text)
    else:
        print(text)


# ------------------------------------------------------------------ launching torchrun from Python (notebooks, tests)
def torchrun_command(script: str | Path, *args, nproc: int = 2, rendezvous: tuple[str, ...] = ("--standalone",)
                     ) -> list[str]:
    """`python -m torch.distributed.run ... script args`: the module form, since a notebook kernel's PATH may not
    hold the `torchrun` executable. `rendezvous` replaces --standalone for multi-node runs (--rdzv-endpoint ...)."""
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc-per-node", str(nproc),
            str(script), *map(str, args)]


def start_torchrun(script: str | Path, *args, nproc: int = 2, env: dict | None = None, cwd: str | Path | None = None,
                   rendezvous: tuple[str, ...] = ("--standalone",)) -> subprocess.Popen:
    """Start torchrun in a process session of its own (stdout and stderr merged, as text), so that
    `finish_torchrun` can kill torchrun and every worker together; OMP_NUM_THREADS=1 unless env says otherwise."""
    return subprocess.Popen(torchrun_command(script, *args, nproc=nproc, rendezvous=rendezvous),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def finish_torchrun(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a started job; past `timeout` seconds stop torchrun and every worker (none is left orphaned) and
    raise subprocess.TimeoutExpired. Returns the exit code and the merged output."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own: SIGTERM lets the agent stop them all; a SIGKILL of
        # the agent's group afterwards catches an agent that does not react.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, "")


def run_torchrun(script: str | Path, *args, nproc: int = 2, timeout: float = 300, env: dict | None = None,
                 cwd: str | Path | None = None, rendezvous: tuple[str, ...] = ("--standalone",)
                 ) -> subprocess.CompletedProcess:
    """Run `script args` on `nproc` local ranks under torchrun and wait (see start_torchrun / finish_torchrun)."""
    return finish_torchrun(start_torchrun(script, *args, nproc=nproc, env=env, cwd=cwd, rendezvous=rendezvous),
                           timeout)


def run_torchrun_json(script: str | Path, *args, nproc: int = 2, timeout: float = 300, env: dict | None = None,
                      cwd: str | Path | None = None) -> dict:
    """Run a script that takes `--out FILE` (a chapter-4 demo, or a test file that is its own worker) under
    torchrun and return the JSON rank 0 wrote there. A failed job raises RuntimeError with the end of its output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = run_torchrun(script, *args, "--out", out, nproc=nproc, timeout=timeout, env=env, cwd=cwd)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun {Path(script).name} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))
