"""The sequential bench runs end to end at tiny sizes and writes its results (no timing checks).

It mounts cagefs and gocryptfs and drops the page cache, so it needs root and /dev/fuse.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "seq.py"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("gocryptfs"),
    reason="needs root, /dev/fuse and gocryptfs",
)


def test_seq_bench_quick_run_writes_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--dir",
            str(tmp_path),
            "--results-dir",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(results.glob("seq-*.json"))
    assert (results / "seq-latest.txt").read_text().startswith("$ ")
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # scratch and mounts are gone
