"""Small files and metadata: the sequence gocryptfs publishes, plus `find` and `git status`.

The input is generated, not downloaded: a tree shaped like a source checkout (by default 20,000
files in about 1,300 directories up to 6 deep, sizes log-normal around 4 KB, capped at 256 KiB,
about 190 MB), the same for every run (seeded), written once per invocation straight into a tar
file, an `md5sum` list and a git repository (its `.git` in scratch, outside the targets).
Per target and round, each step timed from start to exit:
  untar:       `tar xf TREE.tar` into the target;
  git status:  first run (it hashes every file: the index has no stat data for them yet);
  then, each after `drop_caches`:  `md5sum -c --quiet` of every file, `ls -lR` (to /dev/null),
  `find | wc -l`, `git status` again (now only lstat and readdir); and last `rm -rf` of the tree.
"Small-file sequence" is untar + md5sum + ls + rm, the four steps gocryptfs's table has.
"""

import hashlib
import io
import math
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.harness import Metric, Mounted, Settings, Work, Workload, drop_caches, run, timed

SEED = 16
FILES_PER_DIR = 15
MAX_DEPTH = 6
MAX_SIZE = 256 << 10
WORDS = ("core", "net", "fs", "mm", "drivers", "arch", "lib", "sound", "crypto", "block")
SUFFIXES = (".c", ".h", ".S", ".txt", ".rst", "", ".dts", ".py", ".sh", ".yaml")
GIT = ["git", "-c", "safe.directory=*", "-c", "core.untrackedCache=false"]
MTIME = 1_700_000_000  # every entry's mtime, in the tar file and the commit

UNTAR = Metric("untar", "untar", "s", lower_is_better=True)
GIT_FIRST = Metric("git_first", "git status, first (hashes every file)", "s", True)
MD5 = Metric("md5sum", "md5sum -c (cold)", "s", lower_is_better=True)
LS = Metric("ls", "ls -lR (cold)", "s", lower_is_better=True)
FIND = Metric("find", "find | wc -l (cold)", "s", lower_is_better=True)
GIT_STATUS = Metric("git_status", "git status (cold)", "s", lower_is_better=True)
RM = Metric("rm", "rm -rf", "s", lower_is_better=True)
SEQUENCE = Metric("sequence", "small-file sequence (untar+md5sum+ls+rm)", "s", True)


def generate(files: int) -> tuple[list[str], Iterator[tuple[str, bytes]]]:
    """The seeded tree: its directories (parents first) and its files as (path, contents)."""
    rng = random.Random(SEED)
    dirs, depth = ["tree"], {"tree": 0}
    parents = ["tree"]  # the directories that may have subdirectories
    for i in range(1, max(1, files // FILES_PER_DIR)):
        parent = rng.choice(parents)
        child = f"{parent}/{rng.choice(WORDS)}{i}"
        dirs.append(child)
        depth[child] = depth[parent] + 1
        if depth[child] < MAX_DEPTH:
            parents.append(child)

    def contents() -> Iterator[tuple[str, bytes]]:
        for i in range(files):
            size = min(int(rng.lognormvariate(math.log(4000), 1.3)), MAX_SIZE)
            path = f"{rng.choice(dirs)}/{rng.choice(WORDS)}_{i}{rng.choice(SUFFIXES)}"
            yield path, rng.randbytes(size)

    return dirs, contents()


def tar_member(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    return info


class SmallFiles(Workload):
    name = "smallfiles"
    title = "Small files and metadata"

    def __init__(self) -> None:
        self.tar = self.sums = self.git_dir = Path()
        self.entries = 0

    def prepare(self, work: Work, settings: Settings) -> None:
        """Write the tar file, its md5sum list and a git repository of it (an index without
        stat data: the first `git status` in a target hashes every file), straight from the
        generator: writing the tree out and removing it took minutes on a busy disk."""
        inputs = work.scratch("smallfiles")
        self.tar, self.sums, self.git_dir = inputs / "tree.tar", inputs / "MD5SUMS", inputs / "git"
        run(["git", "init", "-q", "--bare", "--initial-branch=main", str(self.git_dir)])
        git = [*GIT, f"--git-dir={self.git_dir}"]
        dirs, contents = generate(settings.files)
        self.entries = len(dirs)
        sums, tree = [], []
        importer = subprocess.Popen([*git, "fast-import", "--quiet"], stdin=subprocess.PIPE)
        assert importer.stdin is not None
        with tarfile.open(self.tar, "w", format=tarfile.GNU_FORMAT) as tar:
            for d in dirs:
                tar.addfile(tar_member(d, tarfile.DIRTYPE, 0o755))
            for mark, (path, data) in enumerate(contents, start=1):
                tar.addfile(tar_member(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
                sums.append(f"{hashlib.md5(data).hexdigest()}  {path}\n")
                importer.stdin.write(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
                tree.append(b"M 100644 :%d %s\n" % (mark, path.removeprefix("tree/").encode()))
                self.entries += 1
        commit = b"commit refs/heads/main\ncommitter bench <b@localhost> %d +0000\ndata 1\n.\n"
        importer.stdin.write(commit % MTIME + b"".join(tree) + b"\n")
        importer.stdin.close()
        if importer.wait() != 0:
            raise RuntimeError("git fast-import of the small-file tree failed")
        self.sums.write_text("".join(sums))
        run([*git, "read-tree", "main"])

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
