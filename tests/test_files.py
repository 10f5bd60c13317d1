"""shared.files: atomic writes and versioned, checksummed JSON."""
import json
import os

import pytest

from shared.files import FileFormatError, atomic_write, is_temporary, read_versioned_json, write_versioned_json


def test_atomic_write_bytes_text_and_callback(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "é")
    atomic_write(tmp_path / "c.txt", lambda p: p.write_text("via callback", encoding="utf-8"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "é"
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "via callback"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.txt"]   # no temporary left over


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    atomic_write(target, "old")

    def crash(path):
        path.write_text("half", encoding="utf-8")
        raise KeyboardInterrupt                 # e.g. Ctrl-C in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_temporaries_are_recognised(tmp_path):
    assert is_temporary(tmp_path / ".ckpt.pt.abc123.tmp") and not is_temporary(tmp_path / "ckpt.pt")


def test_versioned_json_round_trip_and_every_failure_has_its_own_line(tmp_path):
    path = tmp_path / "m.json"
    written = write_versioned_json(path, "llm-book-test", 1, {"n": 3})
    assert read_versioned_json(path, "llm-book-test", 1) == written
    with pytest.raises(FileFormatError, match="no such manifest"):
        read_versioned_json(tmp_path / "absent.json", "llm-book-test", 1, kind="manifest")
    with pytest.raises(FileFormatError, match="is a directory"):
        read_versioned_json(tmp_path, "llm-book-test", 1)
    with pytest.raises(FileFormatError, match="not a other-format"):
        read_versioned_json(path, "other-format", 1)
    with pytest.raises(FileFormatError, match="newer: update the code"):
        write_versioned_json(path, "llm-book-test", 2, {"n": 3})
        read_versioned_json(path, "llm-book-test", 1)
    write_versioned_json(path, "llm-book-test", 1, {"n": 3})
    data = json.loads(path.read_text(encoding="utf-8"))
    data["n"] = 4
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(FileFormatError, match="checksum mismatch"):
        read_versioned_json(path, "llm-book-test", 1)
    path.write_text('{"format": "llm-book-test", "vers', encoding="utf-8")   # truncated
    with pytest.raises(FileFormatError, match="not valid JSON"):
        read_versioned_json(path, "llm-book-test", 1)
    for error in (FileFormatError("x"),):
        assert "\n" not in str(error)


def test_atomic_write_keeps_files_readable(tmp_path):
    atomic_write(tmp_path / "r.txt", "x")
    assert os.stat(tmp_path / "r.txt").st_mode & 0o044 == 0o044


def test_torchrun_launcher_runs_ranks_and_kills_the_whole_job_on_timeout(tmp_path):
    import subprocess
    import time

    from shared.parallel.runtime import run_torchrun
    script = tmp_path / "ranks.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'])\n", encoding="utf-8")
    done = run_torchrun(script, nproc=2, timeout=120)
    assert done.returncode == 0 and {"rank 0 of 2", "rank 1 of 2"} <= set(done.stdout.splitlines())
    sleeper = tmp_path / "sleeper.py"
    marker = tmp_path / "still-alive"
    sleeper.write_text(f"import time, pathlib\ntime.sleep(20)\npathlib.Path({str(marker)!r}).touch()\n",
                       encoding="utf-8")
    with pytest.raises(subprocess.TimeoutExpired):
        run_torchrun(sleeper, nproc=2, timeout=8)
    time.sleep(15)                              # a worker that survived the kill would touch the marker by now
    assert not marker.exists()
