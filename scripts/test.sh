#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, lints, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check cagefs tests bench
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit $rc
