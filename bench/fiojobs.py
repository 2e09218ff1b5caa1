"""fio from the committed job files in bench/fio/, one after the other in each target.

Every job file names the same data file (`fio-data`, 1 GiB), so the sequential job lays it out
and the random ones reuse it. From fio's JSON output each job gives, per direction it did, IOPS
(4 KiB jobs) or MB/s (1 MiB jobs) and the completion latency p50 and p99. The page cache is
dropped before each job file; fio itself invalidates the file's cached pages before each job.
Smaller runs (`--quick`) use copies of the job files with `size=` and `runtime=` rewritten; the
full run uses the committed files as they are, as `fio bench/fio/NAME.fio --directory=MNT` does.
"""

import json
import re
from pathlib import Path

from bench.harness import MB, Metric, Mounted, Settings, Work, Workload, drop_caches, run

JOB_DIR = Path(__file__).resolve().parent / "fio"
ORDER = ("seqrw", "randread", "randwrite", "mixed")  # seqrw first: it lays the file out
DATA_FILE = "fio-data"
FULL_MIB = 1024
QUICK_IOS = 64


def job_files() -> list[Path]:
    found = {path.stem: path for path in JOB_DIR.glob("*.fio")}
    return [found.pop(name) for name in ORDER if name in found] + sorted(found.values())


def resized(job: Path, settings: Settings, into: Path) -> Path:
    """`job` with `size=` and `runtime=` as `settings` asks (`runtime` 0: no `time_based`, each
    job does QUICK_IOS requests), or `job` itself if its own values are the ones asked for."""
    if settings.fio_mib == FULL_MIB and settings.fio_runtime is None:
        return job
    text = re.sub(r"(?m)^size=.*$", f"size={settings.fio_mib}m", job.read_text())
    if settings.fio_runtime == 0:
        text = re.sub(r"(?m)^(time_based|runtime=.*)\n", "", text)
        text = text.replace("[global]\n", f"[global]\nnumber_ios={QUICK_IOS}\n", 1)
    elif settings.fio_runtime is not None:
        text = re.sub(r"(?m)^runtime=.*$", f"runtime={settings.fio_runtime}", text)
    copy = into / job.name
    copy.write_text(text)
    return copy


def job_metrics(job: dict, defaults: dict) -> dict[Metric, float]:
    """IOPS (small blocks) or MB/s (1 MiB blocks), and completion latency p50/p99 (µs), for
    each direction the job did. `defaults`: the job file's global options."""
    if job.get("error"):
        raise RuntimeError(f"fio job {job['jobname']}: error {job['error']}")
    name = job["jobname"]
    big = {**defaults, **job["job options"]}.get("bs", "").lower() in ("1m", "1024k")
    figures: dict[Metric, float] = {}
    for direction in ("read", "write"):
        done = job[direction]
        if not done["io_bytes"]:
            continue
        label = f"fio {name}" + (f" {direction}" if name.startswith("mixed") else "")
        key = f"{name}.{direction}"
        if big:
            figures[Metric(f"{key}.mbs", label, "MB/s")] = done["bw_bytes"] / MB
        else:
            figures[Metric(f"{key}.iops", label, "IOPS")] = done["iops"]
        percentiles = done["clat_ns"].get("percentile", {})
        for p in ("50", "99"):
            if f"{p}.000000" in percentiles:
                figures[Metric(f"{key}.p{p}", f"{label} p{p} latency", "µs", True)] = (
                    percentiles[f"{p}.000000"] / 1000
                )
    return figures


class Fio(Workload):
    name = "fio"
    title = "fio (bench/fio/*.fio)"

    def __init__(self) -> None:
        self.jobs: list[Path] = []
        self.out = Path()

    def prepare(self, work: Work, settings: Settings) -> None:
        into = work.scratch("fio-jobs")
        self.jobs = [resized(job, settings, into) for job in job_files()]
        self.out = into / "out.json"

    def measure(self, target: Mounted, settings: Settings) -> dict[Metric, float]:
        figures: dict[Metric, float] = {}
        for job in self.jobs:
            drop_caches()
            output = ["--output-format=json", f"--output={self.out}"]
            run(["fio", str(job), f"--directory={target.path}", *output])
            output = json.loads(self.out.read_text())
            for result in output["jobs"]:
                figures.update(job_metrics(result, output.get("global options", {})))
        (target.path / DATA_FILE).unlink(missing_ok=True)
        return figures


WORKLOAD = Fio()
