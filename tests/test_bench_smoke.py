"""Each bench runs end to end at tiny sizes and writes its results (no timing checks).

The mount benchmarks mount cagefs and gocryptfs and drop the page cache, so they need root,
/dev/fuse and gocryptfs; the suite needs fio too (all of which scripts/install.sh provides).
`bench.keys` drops the page cache too (root), but mounts nothing.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAN_MOUNT = os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("gocryptfs")
needs_mounts = pytest.mark.skipif(not CAN_MOUNT, reason="needs root, /dev/fuse, gocryptfs")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (drops the page cache)")


def run_quick(module: str, tmp_path: Path) -> Path:
    """`python -m MODULE --quick` with scratch and results in `tmp_path`; the results dir."""
    results = tmp_path / "results"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    options = ["--quick", "--dir", str(tmp_path), "--results-dir", str(results)]
    done = subprocess.run(
        [sys.executable, "-m", module, *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # scratch and mounts are gone
    return results


@pytest.mark.parametrize(
    "name",
    [
        "crypto",
        pytest.param("keys", marks=needs_root),
        *(pytest.param(n, marks=needs_mounts) for n in ("replace", "fuse_ceiling", "pipes")),
    ],
)
def test_bench_quick_run_writes_results_and_cleans_up(tmp_path: Path, name: str) -> None:
    results = run_quick(f"bench.{name}", tmp_path)
    stem = name.replace("_", "-")
    assert list(results.glob(f"{stem}-*.json"))
    assert (results / f"{stem}-latest.txt").read_text().startswith("$ ")


@needs_mounts
@pytest.mark.skipif(not shutil.which("fio"), reason="needs fio")
def test_suite_quick_run_measures_every_workload_on_every_target(tmp_path: Path) -> None:
    [run_dir] = run_quick("bench", tmp_path).iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["errors"] == []
    measured = {
        section["name"]: {column for m in section["metrics"] for column in m["median"]}
        for section in results["sections"]
    }
    every = {"plain", "gocryptfs", "cagefs-auto"}
    for workload in ("seq", "fio", "smallfiles", "sqlite", "append"):
        assert every <= measured[workload], workload
    assert {"ceiling", "age"} <= measured["seq"]
    assert (run_dir / "table.txt").read_text().startswith("$ ")
    assert "| metric |" in (run_dir / "table.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert {"relative.png", "fio-latency.png", "seq.png"} <= {p.name for p in run_dir.iterdir()}
