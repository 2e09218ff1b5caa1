"""Small files and metadata: the sequence gocryptfs publishes, plus `find` and `git status`.

The input is generated, not downloaded: a tree shaped like a source checkout (by default 20,000
files in about 1,300 directories up to 6 deep, sizes log-normal around 4 KB, capped at 256 KiB,
about 190 MB), the same for every run (seeded), packed once per invocation into a tar file with
an `md5sum` list of it and a git repository of it (its `.git` in scratch, outside the targets).
Per target and round, each step timed from start to exit:
  untar:       `tar xf TREE.tar` into the target;
  git status:  first run (it hashes every file, whose inode and ctime are new to the index);
  then, each after `drop_caches`:  `md5sum -c --quiet` of every file, `ls -lR` (to /dev/null),
  `find | wc -l`, `git status` again (now only lstat and readdir); and last `rm -rf` of the tree.
"Small-file sequence" is untar + md5sum + ls + rm, the four steps gocryptfs's table has.
"""

import math
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from bench.harness import Metric, Mounted, Settings, Work, Workload, drop_caches, run, timed

SEED = 16
FILES_PER_DIR = 15
MAX_DEPTH = 6
MAX_SIZE = 256 << 10
WORDS = ("core", "net", "fs", "mm", "drivers", "arch", "lib", "sound", "crypto", "block")
SUFFIXES = (".c", ".h", ".S", ".txt", ".rst", "", ".dts", ".py", ".sh", ".yaml")
GIT = ["git", "-c", "safe.directory=*", "-c", "core.untrackedCache=false"]

UNTAR = Metric("untar", "untar", "s", lower_is_better=True)
GIT_FIRST = Metric("git_first", "git status, first (hashes every file)", "s", True)
MD5 = Metric("md5sum", "md5sum -c (cold)", "s", lower_is_better=True)
LS = Metric("ls", "ls -lR (cold)", "s", lower_is_better=True)
FIND = Metric("find", "find | wc -l (cold)", "s", lower_is_better=True)
GIT_STATUS = Metric("git_status", "git status (cold)", "s", lower_is_better=True)
RM = Metric("rm", "rm -rf", "s", lower_is_better=True)
SEQUENCE = Metric("sequence", "small-file sequence (untar+md5sum+ls+rm)", "s", True)


def generate(root: Path, files: int) -> list[Path]:
    """Write the seeded tree under `root/tree`; return its files, relative to `root`."""
    rng = random.Random(SEED)
    dirs, depth = [Path("tree")], {Path("tree"): 0}
    for i in range(1, max(1, files // FILES_PER_DIR)):
        parent = rng.choice([d for d in dirs[-200:] if depth[d] < MAX_DEPTH])
        child = parent / f"{rng.choice(WORDS)}{i}"
        dirs.append(child)
        depth[child] = depth[parent] + 1
    for d in dirs:
        (root / d).mkdir(parents=True)
    paths = []
    for i in range(files):
        size = min(int(rng.lognormvariate(math.log(4000), 1.3)), MAX_SIZE)
        path = rng.choice(dirs) / f"{rng.choice(WORDS)}_{i}{rng.choice(SUFFIXES)}"
        (root / path).write_bytes(rng.randbytes(size))
        paths.append(path)
    return paths


class SmallFiles(Workload):
    name = "smallfiles"
    title = "Small files and metadata"

    def __init__(self) -> None:
        self.tar = self.sums = self.git_dir = Path()
        self.entries = 0

    def prepare(self, work: Work, settings: Settings) -> None:
        inputs = work.scratch("smallfiles")
        source = inputs / "source"
        paths = generate(source, settings.files)
        self.entries = sum(1 for _ in (source / "tree").rglob("*")) + 1  # find prints the root
        self.tar, self.sums, self.git_dir = inputs / "tree.tar", inputs / "MD5SUMS", inputs / "git"
        run(["tar", "cf", str(self.tar), "-C", str(source), "tree"])
        run(
            ["sh", "-c", 'xargs -0 md5sum > "$0"', str(self.sums)],
            cwd=source,
            input="\0".join(map(str, paths)),
        )
        git = [*GIT, f"--git-dir={self.git_dir}", f"--work-tree={source / 'tree'}"]
        run(["git", "init", "-q", "--bare", str(self.git_dir)])
        run([*git, "add", "-A"])
        run([*git, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm."])
        shutil.rmtree(source)

    def measure(self, target: Mounted, settings: Settings) -> dict[Metric, float]:
        cwd, tree = target.path, target.path / "tree"
        quiet = {"cwd": cwd, "stdout": subprocess.DEVNULL}
        git = [*GIT, f"--git-dir={self.git_dir}", f"--work-tree={tree}", "status", "--short"]
        figures = {
            UNTAR: timed(["tar", "xf", str(self.tar)], cwd=cwd),
            GIT_FIRST: timed(git, **quiet),
        }
        drop_caches()
        figures[MD5] = timed(["md5sum", "-c", "--quiet", str(self.sums)], **quiet)
        drop_caches()
        figures[LS] = timed(["ls", "-lR", "tree"], **quiet)
        drop_caches()
        start = time.perf_counter()
        found = run(["sh", "-c", "find tree | wc -l"], cwd=cwd).stdout
        figures[FIND] = time.perf_counter() - start
        if int(found) != self.entries:
            raise RuntimeError(f"find saw {found.strip()} entries, not {self.entries}")
        drop_caches()
        start = time.perf_counter()
        changes = run(git, cwd=cwd).stdout
        figures[GIT_STATUS] = time.perf_counter() - start
        if changes:
            raise RuntimeError(f"git status after untar: {changes[:300]!r}")
        figures[RM] = timed(["rm", "-rf", "tree"], cwd=cwd)
        figures[SEQUENCE] = figures[UNTAR] + figures[MD5] + figures[LS] + figures[RM]
        if os.listdir(cwd):
            raise RuntimeError(f"rm -rf left {os.listdir(cwd)[:5]} in {cwd}")
        return figures


WORKLOAD = SmallFiles()
