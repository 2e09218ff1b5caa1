"""The suite's results: figures per (section, metric, column), the tables, the checks of issue
16's targets, and the files written for a run (results.json, table.txt, table.md, charts)."""

import contextlib
import datetime
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.harness import Metric

KIND_ORDER = ("plain", "gocryptfs", "reference", "cagefs")
RSS_LIMIT_MIB = 150


@dataclass(frozen=True)
class Target16:
    """One of issue 16's targets: cagefs's median against gocryptfs's (or alone) within bounds."""

    section: str
    key: str  # a metric key; a trailing '*' matches every key starting with the rest
    text: str
    bound: float
    at_least: bool  # the ratio (or the value, for absolute) must be >= bound; else <=
    absolute: bool = False


MEMORY = f"daemon memory <= {RSS_LIMIT_MIB} MiB"
QD1, QD16 = "randread-psync-qd1.read.iops", "randread-libaio-qd16.read.iops"
TARGETS = (
    Target16("seq", "write", "dd write / gocryptfs >= 2", 2, True),
    Target16("seq", "read", "dd cold read / gocryptfs >= 1", 1, True),
    Target16("smallfiles", "sequence", "small-file sequence time / gocryptfs <= 1.5", 1.5, False),
    Target16("smallfiles", "ls", "ls -lR time / gocryptfs <= 1.5", 1.5, False),
    Target16("smallfiles", "find", "find time / gocryptfs <= 1.5", 1.5, False),
    Target16("fio", QD1, "4K randread QD1 IOPS / gocryptfs >= 0.5", 0.5, True),
    Target16("fio", QD16, "4K randread QD16 IOPS / gocryptfs >= 0.5", 0.5, True),
    Target16("resources", "rss.*", MEMORY, RSS_LIMIT_MIB, at_least=False, absolute=True),
)


@dataclass
class Results:
    command: str
    options: dict
    load_before: tuple[float, ...]
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (label, kind)
    sections: dict[str, str] = field(default_factory=dict)  # name -> title
    values: dict[str, dict[Metric, dict[str, list[float]]]] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    rounds_done: int = 0

    def column(self, key: str, label: str, kind: str) -> None:
        self.columns.setdefault(key, (label, kind))

    def section(self, name: str, title: str) -> None:
        self.sections[name] = title
        self.values.setdefault(name, {})

    def add(self, section: str, figures: dict[Metric, float], column: str) -> None:
        for metric, value in figures.items():
            self.values[section].setdefault(metric, {}).setdefault(column, []).append(value)

    def error(self, section: str, column: str, round_number: int, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        where = {"section": section, "column": column, "round": round_number}
        self.errors.append({**where, "error": message[-3000:]})

    # ---------------------------------------------------------------- reading

    def ordered_columns(self) -> list[str]:
        return sorted(self.columns, key=lambda k: KIND_ORDER.index(self.columns[k][1]))

    def cagefs_columns(self) -> list[str]:
        return [k for k in self.ordered_columns() if self.columns[k][1] == "cagefs"]

    def median(self, section: str, metric: Metric, column: str) -> float | None:
        runs = self.values[section].get(metric, {}).get(column)
        return statistics.median(runs) if runs else None

    def ratio(self, section: str, metric: Metric, column: str, reference: str) -> float | None:
        value, ref = self.median(section, metric, column), self.median(section, metric, reference)
        return value / ref if value is not None and ref else None

    def metrics(self, section: str, key: str) -> list[Metric]:
        wanted = key.rstrip("*")
        return [
            m
            for m in self.values.get(section, {})
            if (m.key.startswith(wanted) if key.endswith("*") else m.key == key)
        ]

    def checks(self) -> list[dict]:
        found = []
        for target in TARGETS:
            for metric in self.metrics(target.section, target.key):
                for column in self.cagefs_columns():
                    if target.absolute:
                        value = self.median(target.section, metric, column)
                    else:
                        value = self.ratio(target.section, metric, column, "gocryptfs")
                    if value is None:
                        status = "SKIP"
                    else:
                        ok = value >= target.bound if target.at_least else value <= target.bound
                        status = "PASS" if ok else "FAIL"
                    text = target.text
                    if target.key.endswith("*"):
                        text += f" ({metric.label.split(': ', 1)[-1]})"
                    found.append(
                        {"column": column, "target": text, "value": value, "status": status}
                    )
        return found

    # ---------------------------------------------------------------- tables

    def header(self) -> list[str]:
        ratios = [
            f"{c.removeprefix('cagefs-')}/{ref}"
            for c in self.cagefs_columns()
            for ref in ("gocryptfs", "plain")
        ]
        return ["metric", "unit", *self.ordered_columns(), *ratios]

    def rows(self) -> list[tuple[str, list[str]]]:
        """(section title, cells) for every metric that has a figure, in order."""
        found = []
        for section, title in self.sections.items():
            for metric in self.values[section]:
                cells = [metric.label, metric.unit + (" ↓" if metric.lower_is_better else " ↑")]
                cells += [number(self.median(section, metric, c)) for c in self.ordered_columns()]
                cells += [
                    times(self.ratio(section, metric, c, ref))
                    for c in self.cagefs_columns()
                    for ref in ("gocryptfs", "plain")
                ]
                found.append((title, cells))
        return found

    def text_table(self) -> str:
        header, rows = self.header(), self.rows()
        every = [header, *(cells for _, cells in rows)]
        widths = [max(len(cells[i]) for cells in every) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            padded = (
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            return "  ".join(padded).rstrip()

        out, current = [f"$ {self.command}", *self.legend(), "", line(header)], None
        for title, cells in rows:
            if title != current:
                out += ["", f"{title}:"]
                current = title
            out.append(line(cells))
        return "\n".join([*out, "", *self.check_lines(), *self.error_lines()]) + "\n"

    def markdown_table(self) -> str:
        header, rows = self.header(), self.rows()
        out = [f"`{self.command}`", "", *self.legend(), ""]
        out += ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]
        current = None
        for title, cells in rows:
            if title != current:
                out.append(f"| **{title}** |" + " |" * (len(header) - 1))
                current = title
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join([*out, "", *self.check_lines(), *self.error_lines()]) + "\n"

    def legend(self) -> list[str]:
        rounds = f"{self.rounds_done}"
        if self.rounds_done != self.options.get("repeat"):
            rounds += f" (of {self.options.get('repeat')} asked)"
        lines = [
            f"median of {rounds} round(s); ↑ higher is better, ↓ lower; ratios are cagefs's "
            "median over the reference's; MB = 10^6 bytes; load average "
            f"{self.load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        ]
        lines += [f"  {key}: {label}" for key, (label, _) in self.columns.items()]
        return lines

    def check_lines(self) -> list[str]:
        lines = ["issue 16 targets:"]
        for c in self.checks():
            value = "-" if c["value"] is None else f"{c['value']:.2f}"
            lines.append(f"  [{c['status']}] {c['column']}: {c['target']} (got {value})")
        return lines

    def error_lines(self) -> list[str]:
        lines = [
            f"ERROR round {e['round']}, {e['section']} on {e['column']}: "
            + e["error"].splitlines()[0][:300]
            for e in self.errors
        ]
        return ["", *lines] if lines else []

    def to_json(self) -> dict:
        return {
            "command": self.command,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in self.options.items()},
            "rounds_done": self.rounds_done,
            "environment": environment(Path(self.options["dir"]), self.load_before),
            "columns": {k: {"label": lb, "kind": kind} for k, (lb, kind) in self.columns.items()},
            "sections": [
                {
                    "name": section,
                    "title": title,
                    "metrics": [
                        {
                            **asdict(m),
                            "runs": runs,
                            "median": {c: statistics.median(v) for c, v in runs.items()},
                        }
                        for m, runs in self.values[section].items()
                    ],
                }
                for section, title in self.sections.items()
            ],
            "checks": self.checks(),
            "errors": self.errors,
        }


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def check(target: str, value: float | None, need: float) -> dict:
    """A standalone benchmark's target: `value` must be at least `need` (SKIP without one)."""
    status = "SKIP" if value is None else ("PASS" if value >= need else "FAIL")
    return {"target": target, "value": value, "need": need, "status": status}


def save_standalone(where: Path, stem: str, text: str, results: dict) -> None:
    """A standalone benchmark's printed table to `STEM-latest.txt`, its numbers (with the
    command line) to `STEM-DATE.json`, in `where`."""
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{stem}-{datetime.date.today().isoformat()}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )
    (where / f"{stem}-latest.txt").write_text(text)


def version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    return "missing"


def environment(scratch: Path, load_before: tuple[float, ...]) -> dict:
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.machine()
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_kib": int(memory),
        "scratch_fs": version(["stat", "-f", "-c", "%T", str(scratch)]),
        "gocryptfs": version(["gocryptfs", "-version"]),
        "age": version(["age", "--version"]),
        "fio": version(["fio", "--version"]),
        "sqlite": sqlite3.sqlite_version,
        "git": version(["git", "--version"]),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def save(results: Results, where: Path, charts: bool) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    (where / "table.txt").write_text(results.text_table())
    (where / "table.md").write_text(results.markdown_table())
    if charts:
        try:
            from bench.charts import draw
        except ImportError as missing:  # matplotlib is optional
            print(f"no charts: {missing} (pip install matplotlib)", file=sys.stderr)
        else:
            draw(results, where)
    return where
