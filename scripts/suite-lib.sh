# Sourced by pjdfstest.sh and fsx.sh: mount a throwaway store of one target (a cagefs strategy
# or gocryptfs) in the foreground, and take it down again. The caller sets PYTHON and a trap
# that calls `unmount`; MNT and DAEMON name what is mounted now.
MNT="" DAEMON=""
GOCRYPTFS_PASS="echo suite-throwaway-password"
TARGETS_ALL="auto stream memory tempfile gocryptfs"

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

check_targets() {
    local target
    for target in "$@"; do
        [[ " $TARGETS_ALL " == *" $target "* ]] || die "unknown target $target ($TARGETS_ALL)"
    done
}

mounted() { grep -qs " $1 fuse" /proc/mounts; }

unmount() {
    # Detach our mount and wait for the daemon we started; kill it only if it will not end.
    if [[ -n $MNT ]] && mounted "$MNT"; then
        fusermount3 -u "$MNT" 2>/dev/null || sleep 2
        mounted "$MNT" && fusermount3 -u -z "$MNT" 2>/dev/null
    fi
    if [[ -n $DAEMON ]]; then
        for _ in $(seq 120); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 1; done
        kill -0 "$DAEMON" 2>/dev/null && kill -9 "$DAEMON" 2>/dev/null
        wait "$DAEMON" 2>/dev/null || true
    fi
    MNT="" DAEMON=""
}

mount_target() {  # mount_target TARGET DIR LOG [cagefs mount options]: DIR/store at DIR/mnt
    local target=$1 dir=$2 log=$3
    shift 3
    mkdir -p "$dir/mnt" "$dir/store"
    chmod 755 "$dir" "$dir/mnt" "$dir/store"
    if [[ $target == gocryptfs ]]; then
        gocryptfs -q -init -extpass "$GOCRYPTFS_PASS" -scryptn 10 "$dir/store" >"$log" 2>&1
        gocryptfs -fg -allow_other -extpass "$GOCRYPTFS_PASS" "$dir/store" "$dir/mnt" \
            >>"$log" 2>&1 &
    else
        "$PYTHON" -m cagefs keygen -o "$dir/key" >"$log" 2>&1
        "$PYTHON" -m cagefs init "$dir/store" --identity "$dir/key" >>"$log" 2>&1
        "$PYTHON" -m cagefs mount "$dir/store" "$dir/mnt" -i "$dir/key" --strategy "$target" \
            -f "$@" >>"$log" 2>&1 &
    fi
    DAEMON=$! MNT=$dir/mnt
    local _
    for _ in $(seq 60); do
        mounted "$MNT" && return 0
        kill -0 "$DAEMON" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$log" >&2
    die "$target: the mount did not come up"
}

# After an unmount: every backing file opens with the Go age CLI, and no temp version is left.
check_backing() {  # check_backing DIR: prints "backing files N, age -d failures N, temps left N"
    local dir=$1 files=0 bad=0 temps=0 path
    while IFS= read -r -d '' path; do
        files=$((files + 1))
        age -d -i "$dir/key" "$path" >/dev/null 2>&1 || bad=$((bad + 1))
    done < <(find "$dir/store" -path "$dir/store/.cagefs" -prune -o -name '*.age' -type f -print0)
    [[ -d $dir/store/.cagefs/tmp ]] && temps=$(find "$dir/store/.cagefs/tmp" -type f | wc -l)
    echo "backing files $files, age -d failures $bad, temps left $temps"
}
