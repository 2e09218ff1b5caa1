"""The crypto bench runs end to end at tiny sizes and writes its results (no timing checks)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "crypto.py"


def test_crypto_bench_quick_run_writes_results(tmp_path: Path) -> None:
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
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(results.glob("crypto-*.json"))
    assert (results / "crypto-latest.txt").read_text().startswith("$ ")
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # its temp dir is gone
