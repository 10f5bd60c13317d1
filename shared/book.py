"""Execute the book's notebooks headless, in reading order (hand-written plumbing, not generated).

    python -m shared.book                      # every notebook -> build/<chapter>/<notebook>.ipynb
    python -m shared.book ch01                 # only notebooks whose path contains "ch01"
    python -m shared.book --inplace NOTEBOOK   # refresh a notebook's committed outputs (authors only)

The committed notebooks are never rewritten unless --inplace is given. Kernels run with KERNEL_ENV, the settings
that make outputs reproducible; `make test` sets the same (the Makefile's TEST_ENV, checked by a test), and every
notebook reads pinned data sources, which are the same online and offline, so `make book` shows what CI checks.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from shared.export import ROOT, notebooks

BUILD = ROOT / "build"
# Set for every kernel (and by the Makefile's TEST_ENV for nbval): str hashes, hence set and dict orders of strings,
# are the same in every run.
KERNEL_ENV = {"PYTHONHASHSEED": "0"}


def execute(nb_path: Path, out_path: Path, timeout: int = 900) -> float:
    """Run one notebook with its own folder as working directory; save the executed copy to out_path."""
    nb = nbformat.read(nb_path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(nb_path.parent)}})
    start = time.perf_counter()
    try:
        # The kernel process's own log (e.g. ipykernel's TCP notice) would break the progress lines; what the
        # cells print still reaches the notebook through the kernel's messages.
        client.execute(stderr=subprocess.DEVNULL)
    finally:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("select", nargs="*", help="run only notebooks whose path contains one of these strings")
    parser.add_argument("--inplace", action="store_true", help="overwrite the committed notebooks' outputs")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default 900)")
    args = parser.parse_args(argv)

    os.environ.update(KERNEL_ENV)          # kernels inherit this process's environment
    # The kernel must be this environment's Python, whatever `python3` is on PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    chosen = [p for p in notebooks() if not args.select or any(s in p.as_posix() for s in args.select)]
    if not chosen:
        print(f"no notebook matches {args.select}")
        return 1
    results = []
    for i, nb_path in enumerate(chosen, 1):
        rel = nb_path.relative_to(ROOT)
        out = nb_path if args.inplace else BUILD / rel
        print(f"[{i}/{len(chosen)}] {rel} ...", end=" ", flush=True)
        try:
            seconds = execute(nb_path, out, args.timeout)
            results.append((rel, "ok", seconds))
            print(f"ok ({seconds:.0f} s)", flush=True)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            results.append((rel, "FAILED", float("nan")))
            print(f"FAILED ({type(e).__name__}) -- see {out}\n{str(e)[-2000:]}", flush=True)
    failed = [r for r in results if r[1] != "ok"]
    total = sum(s for _, status, s in results if status == "ok")
    print(f"\n{'notebook':60s} {'status':>7s} {'seconds':>8s}")
    for rel, status, seconds in results:
        print(f"{rel.as_posix():60s} {status:>7s} {seconds:8.0f}")
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ran in {total:.0f} s"
          + ("" if args.inplace else f"; executed copies are in {BUILD.relative_to(ROOT)}/"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
