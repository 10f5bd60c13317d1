"""shared.evals.sandbox (notebook ch05_evaluation/03_humaneval): every hostile program ends in a failing verdict
within its limits and harms nothing; the kernel's limits hold even without the Python-level guard."""
import os
import socket
import subprocess
import sys
import time

import pytest

from shared.evals.sandbox import ExecutionResult, network_isolation, run_program, run_programs

TIMEOUT = 2.0


@pytest.fixture
def canary(tmp_path):
    """A file outside the program's directory, in a directory anyone may enter: only permissions protect it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(folder, 0o755)
    path = folder / "canary.txt"
    path.write_text("still here", encoding="utf-8")
    os.chmod(path, 0o666 if os.geteuid() != 0 else 0o644)
    yield path
    assert path.read_text(encoding="utf-8") == "still here", "a sandboxed program touched the canary"


def test_a_correct_program_passes_and_its_output_comes_back():
    result = run_program("x = sum(range(10))\nassert x == 45\nprint('forty-five')")
    assert result.passed and result.status == "passed" and result.returncode == 0
    assert result.stdout.strip() == "forty-five"             # the nonce is removed from what is shown


@pytest.mark.parametrize("source, status", [
    ("assert 1 + 1 == 3", "failed"),
    ("def f(:\n    pass", "failed"),
    ("raise ValueError('no')", "failed"),
    ("", "passed"),
])
def test_ordinary_verdicts(source, status):
    assert run_program(source).status == status


HOSTILE = {
    "infinite loop": ("while True:\n    pass", "timeout"),
    "sleeping": ("import time\ntime.sleep(60)", "timeout"),
    "memory bomb": ("x = [0] * 10**10", "memory"),
    "growing memory bomb": ("x = []\nwhile True:\n    x.append(bytearray(10**8))", "memory"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", "failed"),
    "subprocess": ("import subprocess\nsubprocess.run(['true'])", "failed"),
    "sys.exit(0) before the checks": ("import sys\nsys.exit(0)\nassert False", "exited early"),
    "os._exit(0) before the checks": ("import os\nos._exit(0)\nassert False", "exited early"),
    "raise SystemExit": ("raise SystemExit(0)\nassert False", "exited early"),
    "exit() builtin": ("exit(0)\nassert False", "failed"),
    "output flood": ("while True:\n    print('x' * 1000)", "output limit"),
    "file flood": ("with open('big', 'w') as f:\n    while True:\n        f.write('x' * 10**6)", "output limit"),
    "fake success line": ("import os\nprint('0' * 32)\nos._exit(0)", "exited early"),
    "atexit after a failure": ("import atexit, os\natexit.register(lambda: os._exit(0))\nassert False", "failed"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_fail_within_their_limits(name, canary):
    source, status = HOSTILE[name]
    start = time.perf_counter()
    result = run_program(source, timeout=TIMEOUT)
    assert not result.passed
    assert result.status == status, (result.status, result.error)
    assert time.perf_counter() - start < TIMEOUT + 10


@pytest.mark.parametrize("guard", [True, False])
def test_deleting_a_file_outside_fails_and_the_canary_survives(canary, guard):
    for source in (f"import os\nos.remove({str(canary)!r})",
                   f"import os\nassert os.system('rm -rf {canary.parent}') == 0",
                   f"import shutil\nshutil.rmtree({str(canary.parent)!r})",
                   f"open({str(canary)!r}, 'w').write('gone')"):
        result = run_program(source, timeout=TIMEOUT, guard=guard)
        assert not result.passed, (source, result)
        assert canary.read_text(encoding="utf-8") == "still here"


@pytest.mark.skipif(os.geteuid() != 0, reason="the fresh-uid process limit applies when the parent is root")
def test_the_kernel_stops_a_fork_bomb_without_the_python_guard():
    result = run_program("import os\nwhile True:\n    os.fork()", timeout=TIMEOUT, guard=False)
    assert result.status == "failed" and "BlockingIOError" in result.error      # EAGAIN: RLIMIT_NPROC bound
    # the one sandbox process is gone: nothing runs under a uid above 1,000,000 (the fresh uids)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) >= 1_000_000]
    assert leftovers == []


def _uid(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return -1


@pytest.mark.skipif(os.geteuid() != 0, reason="signal rules protect other processes only for the fresh uid")
def test_the_program_cannot_kill_another_process():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = run_program(f"import signal, os\nos.kill({victim.pid}, signal.SIGKILL)", guard=False)
        assert result.status == "failed" and "PermissionError" in result.error
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_no_network_not_even_the_parents_loopback():
    if not network_isolation():
        pytest.skip("no network namespace available here (unshare --net failed)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
        assert run_program(connect, network=True).passed                  # the test can fail: it works outside
        inside = run_program(connect)
        assert not inside.passed and ("Connection refused" in inside.error or "unreachable" in inside.error)
        outside = run_program("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)")
        assert not outside.passed and "unreachable" in outside.error
    finally:
        server.close()


def test_the_environment_holds_no_inherited_secrets(monkeypatch):
    monkeypatch.setenv("API_TOKEN", "secret-value")
    result = run_program("import os\nprint(sorted(os.environ))\nassert 'API_TOKEN' not in os.environ")
    assert result.passed, result.error
    assert "API_TOKEN" not in result.stdout


def test_each_program_gets_a_fresh_empty_directory():
    sources = ["import os\nassert os.listdir('.') == []\nopen('mine', 'w').write('x')"] * 4
    assert all(r.passed for r in run_programs(sources, workers=2, progress=False))


def test_results_keep_the_input_order_across_workers():
    sources = [f"import time\ntime.sleep({0.3 if i % 2 == 0 else 0})\nassert {i} % 3 != 0" for i in range(6)]
    results = run_programs(sources, workers=2, progress=False)
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(6)]
    assert all(isinstance(r, ExecutionResult) for r in results)


@pytest.mark.parametrize("bad", [dict(timeout=0), dict(memory_mb=-1), dict(output_kb=0)])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="must be positive"):
        run_program("pass", **bad)
