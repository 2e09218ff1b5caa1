"""The man page and shell completion generated from the argparse parser (15.7): the page
renders without warnings and documents every verb and exit code; bash completes verbs and
options; the zsh function parses."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cagefs.cli.main import build_parser, verb_names
from cagefs.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("argparse_manpage", reason="the test extra (argparse-manpage, shtab)")
    pytest.importorskip("shtab", reason="the test extra (argparse-manpage, shtab)")
    out = tmp_path_factory.mktemp("docs")
    subprocess.run(
        [ROOT / "scripts/gen-docs.sh", out],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        timeout=120,
    )
    return out


def test_man_page_renders_and_documents_every_verb_and_exit_code(docs: Path) -> None:
    done = subprocess.run(
        ["man", "--warnings", "-l", docs / "cagefs.1"],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": ""},
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    text = done.stdout
    for verb in verb_names(build_parser()):
        assert f"cagefs {verb}" in text, verb
    assert "EXIT STATUS" in text and "mount.fuse.cagefs" in text
    for code in ExitCode:
        assert code.name.lower().replace("_", " ") in text, code


def complete(docs: Path, *words: str) -> list[str]:
    script = (
        f"source {docs / 'cagefs.bash'}\n"
        f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        "_shtab_cagefs; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completes_verbs_and_options(docs: Path) -> None:
    assert "mount" in complete(docs, "cagefs", "mo")
    assert "umount" in complete(docs, "cagefs", "umo")
    assert "--publish-interval" in complete(docs, "cagefs", "mount", "--pub")


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
def test_zsh_completion_parses(docs: Path) -> None:
    subprocess.run(["zsh", "-n", docs / "_cagefs"], check=True)
