#!/usr/bin/env bash
# The man page and shell completion, generated from cagefs's own argparse parser by
# argparse-manpage and shtab (the `docs` extra, also in `test`), into DIR (default build/docs):
#   cagefs.1, cagefs.bash (bash-completion), _cagefs (zsh).
# The exit status section is written from cagefs.errors.ExitCode, so it cannot drift.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/docs}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
include=$(mktemp)
trap 'rm -f "$include"' EXIT
cp docs/cagefs.1.include "$include"
"$python" - >>"$include" <<'PY'
from cagefs.errors import ExitCode
print("\n[EXIT STATUS]")
for code in ExitCode:
    print(f".TP\n.B {code.value}\n{code.name.lower().replace('_', ' ')}")
PY
version=$("$python" -c 'import cagefs; print(cagefs.__version__)')
"$python" -c 'from argparse_manpage.cli import main; main()' --module cagefs.cli.main --function build_parser \
    --prog cagefs --project-name cagefs --version "$version" --manual-title "cagefs manual" \
    --description "a transparent filesystem that keeps every file as an age file" \
    --include "$include" --output "$out/cagefs.1"
"$python" -m shtab --shell=bash --prog cagefs cagefs.cli.main.build_parser >"$out/cagefs.bash"
"$python" -m shtab --shell=zsh --prog cagefs cagefs.cli.main.build_parser >"$out/_cagefs"
