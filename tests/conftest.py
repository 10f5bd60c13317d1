"""Fixtures shared by test files. `ranks`: for a test file that is also its own torchrun worker
(test_data_parallel.py, test_tensor_parallel.py): its `worker` runs on real gloo ranks, once per module and rank
count, and the tests assert on what rank 0 wrote."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.parallel.runtime import run_torchrun_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def ranks(request) -> tuple[int, dict]:
    """(number of ranks, rank 0's results) of `python -m torch.distributed.run ... THIS_TEST_FILE --out FILE`."""
    results = run_torchrun_json(request.module.__file__, nproc=request.param, timeout=240, cwd=ROOT)
    return request.param, results


@pytest.fixture
def one_torch_thread():
    """Small matrices on a shared 2-core machine: one thread is many times faster than two fighting for a core."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
