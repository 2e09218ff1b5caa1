"""Each bench runs end to end at tiny sizes and writes its results (no timing checks).

The sequential bench mounts cagefs and gocryptfs and drops the page cache, so it needs root,
/dev/fuse and gocryptfs (all of which scripts/install.sh and CI provide).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
CAN_MOUNT = os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("gocryptfs")


@pytest.mark.parametrize(
    "name",
    [
        "crypto",
        *(
            pytest.param(
                name,
                marks=pytest.mark.skipif(not CAN_MOUNT, reason="needs root, /dev/fuse, gocryptfs"),
            )
            for name in ("seq", "replace", "fuse_ceiling")
        ),
    ],
)
def test_bench_quick_run_writes_results_and_cleans_up(tmp_path: Path, name: str) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / f"{name}.py"),
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
    stem = name.replace("_", "-")
    assert list(results.glob(f"{stem}-*.json"))
    assert (results / f"{stem}-latest.txt").read_text().startswith("$ ")
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # scratch and mounts are gone
