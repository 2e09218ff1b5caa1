#!/usr/bin/env bash
# fsx (the file-system exerciser from xfstests) against a fresh cagefs store per strategy.
# Fetches and builds nothing: FSX names a built fsx binary.
#
#   FSX=/path/to/fsx scripts/fsx.sh [-N OPS] [auto|stream|memory|tempfile|gocryptfs]...
#
# Default: 10000 operations on each of auto stream memory tempfile. fsx checks every read against
# its own model of the file; afterwards the mount is taken down and the file's backing version must
# decrypt with the Go `age -d` to exactly what the mount showed, with no temp version left.
# Environment:
#   PYTHON    interpreter that can import cagefs's dependencies (default: REPO/.venv/bin/python)
#   FSX_ARGS  extra fsx flags (default: none; e.g. "-c 50" closes and reopens the file at random)
#   SEED      fsx seed (default 1; fsx's own default)
#   OUT       where the fsx and daemon logs go (default: a new directory, printed)
#   WORKDIR   where the throwaway stores and mount points go (default: /var/tmp)
#   STORE_SIZE    size of the loop-mounted disk each store lives on (default: 4G: pjdfstest's
#                 open/25 writes past 2 GiB)
# Every mount, daemon and store it made is removed on exit, also on errors and Ctrl-C.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/suite-lib.sh
. "$REPO/scripts/suite-lib.sh"
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OPS=10000
if [[ ${1:-} == -N ]]; then OPS=$2; shift 2; fi

[[ -n ${FSX:-} && -x ${FSX:-} ]] || die "set FSX to a built fsx binary"
[[ $(id -u) -eq 0 ]] || die "run as root: it mounts"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(auto stream memory tempfile)
check_targets "${targets[@]}"

WORK=$(mktemp -d "${WORKDIR:-/var/tmp}/fsx.XXXXXX")
OUT=${OUT:-$WORK-results}
mkdir -p "$OUT"
trap 'unmount; unmount_disk; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

failed=0
for target in "${targets[@]}"; do
    dir=$WORK/$target
    mkdir -p "$OUT/$target"
    mount_target "$target" "$dir" "$OUT/$target.daemon.log"
    start=$SECONDS
    # shellcheck disable=SC2086  # FSX_ARGS is a list of flags
    if nice -n 10 "$FSX" -N "$OPS" -S "${SEED:-1}" -P "$OUT/$target" ${FSX_ARGS:-} \
        "$MNT/fsx.file" >"$OUT/$target.fsx.log" 2>&1; then
        result="ok"
    else
        result="FAILED (see $OUT/$target.fsx.log)"
        failed=$((failed + 1))
    fi
    seen=$(sha256sum <"$MNT/fsx.file" | cut -d' ' -f1)
    unmount
    backing="n/a"
    if [[ $target != gocryptfs ]]; then
        stored=$(age -d -i "$dir/key" "$STORE/fsx.file.age" 2>/dev/null | sha256sum |
            cut -d' ' -f1)
        [[ $stored == "$seen" ]] && backing="same as the mount" ||
            { backing="DIFFERS from the mount"; failed=$((failed + 1)); }
        backing="$backing; $(check_backing "$STORE" "$dir/key")"
    fi
    unmount_disk
    tracebacks=$(grep -c Traceback "$OUT/$target.daemon.log" || true)
    printf '%-10s fsx %d ops: %s in %ds; backing %s; daemon tracebacks %d\n' "$target" "$OPS" \
        "$result" "$((SECONDS - start))" "$backing" "$tracebacks" | tee -a "$OUT/summary.txt"
done
echo "logs in $OUT"
exit $((failed > 0))
