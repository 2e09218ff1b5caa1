#!/usr/bin/env bash
# pjdfstest, the POSIX system-call suite, against a fresh cagefs store per strategy (and gocryptfs
# to compare). Fetches and builds nothing: PJDFSTEST names a tree where pjdfstest is built.
#
#   PJDFSTEST=/path/to/pjdfstest scripts/pjdfstest.sh [auto|stream|memory|tempfile|gocryptfs]...
#
# Default targets: auto stream memory tempfile. Runs as root (the suite changes owners), mounts
# with -o allow_other, runs `prove -v` on every tests/*/*.t inside the mount, and prints the
# passed/failed assertions per test file and in total. Environment:
#   PYTHON    interpreter that can import cagefs's dependencies (default: REPO/.venv/bin/python)
#   TESTS     test directories to run, e.g. "mkdir rename" (default: all)
#   OUT       where the TAP logs, daemon logs and counts go (default: a new directory, printed)
#   WORKDIR   where the throwaway stores and mount points go (default: /var/tmp)
#   FILE_TIMEOUT  seconds one test file may take before it counts as hung (default: 900)
#   STORE_SIZE    size of the loop-mounted disk each store lives on (default: 4G: pjdfstest's
#                 open/25 writes past 2 GiB)
# Every mount, daemon and store it made is removed on exit, also on errors and Ctrl-C.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/suite-lib.sh
. "$REPO/scripts/suite-lib.sh"
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
FILE_TIMEOUT=${FILE_TIMEOUT:-900}

[[ -n ${PJDFSTEST:-} ]] || die "set PJDFSTEST to a built pjdfstest tree (with ./pjdfstest, tests/)"
[[ -x $PJDFSTEST/pjdfstest && -d $PJDFSTEST/tests ]] || die "$PJDFSTEST: no built pjdfstest"
[[ $(id -u) -eq 0 ]] || die "run as root: the suite changes owners and modes"
command -v prove >/dev/null || die "prove (perl) is missing"
[[ -x $PYTHON ]] || die "$PYTHON: no such interpreter (set PYTHON)"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(auto stream memory tempfile)
check_targets "${targets[@]}"

WORK=$(mktemp -d "${WORKDIR:-/var/tmp}/pjdfstest.XXXXXX")
chmod 755 "$WORK"  # the suite runs some steps as other users
OUT=${OUT:-$WORK-results}
mkdir -p "$OUT"
trap 'unmount; unmount_disk; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# Counts per test file from `prove -v` output: passed, failed, todo (expected failures).
count_tap() {
    awk '/^not ok [0-9]+.*# TODO/ { todo++; next }
         /^not ok [0-9]+/ { failed++; next }
         /^ok [0-9]+/ { passed++ }
         END { printf "%d %d %d\n", passed, failed, todo }' "$1"
}

run_target() {
    local target=$1 dir=$WORK/$1 total_pass=0 total_fail=0 files=0 hung=0
    local counts=$OUT/$target.counts
    mount_target "$target" "$dir" "$OUT/$target.daemon.log" -o allow_other
    : >"$counts"
    local subdirs=()
    if [[ -n ${TESTS:-} ]]; then
        for t in $TESTS; do subdirs+=("$PJDFSTEST/tests/$t"); done
    else
        subdirs=("$PJDFSTEST/tests")
    fi
    mkdir -p "$OUT/$target"
    while read -r file; do
        local rel=${file#"$PJDFSTEST"/tests/} tap
        tap=$OUT/$target/${rel//\//_}.tap
        # Each file in the mount root, as the suite's README says; one file at a time so that a
        # hang is attributed to one file and cannot stop the whole run.
        (cd "$MNT" && timeout -k 30 "$FILE_TIMEOUT" prove -v --merge "$file" >"$tap" 2>&1) ||
            true
        grep -q '^Result: ' "$tap" || { echo "# HUNG or aborted after ${FILE_TIMEOUT}s" >>"$tap"
            hung=$((hung + 1)); }
        read -r pass fail todo < <(count_tap "$tap")
        printf '%-10s %-20s passed %4d failed %4d%s\n' "$target" "$rel" "$pass" "$fail" \
            "$([[ $todo -gt 0 ]] && echo " todo $todo")" | tee -a "$counts"
        total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) files=$((files + 1))
    done < <(find "${subdirs[@]}" -name '*.t' | sort -V)
    unmount
    unmount_disk
    local tracebacks
    tracebacks=$(grep -c Traceback "$OUT/$target.daemon.log" || true)
    printf 'TOTAL %-10s files %d  passed %d  failed %d  (of %d)  hung files %d  %s %d\n' \
        "$target" "$files" "$total_pass" "$total_fail" "$((total_pass + total_fail))" "$hung" \
        "daemon tracebacks" "$tracebacks" | tee -a "$OUT/summary.txt"
}

echo "pjdfstest: $PJDFSTEST; logs and counts in $OUT"
for target in "${targets[@]}"; do
    run_target "$target"
done
cat "$OUT/summary.txt"
