# Sourced by pjdfstest.sh and fsx.sh: mount a throwaway store of one target (a cagefs strategy
# or gocryptfs) in the foreground, and take it down again. The caller sets PYTHON and a trap
# that calls `unmount; unmount_disk`; MNT, DAEMON and DISK name what is mounted now. The store
# lives on a loop-mounted ext4 of STORE_SIZE (default 4G), so that a test which writes without
# bound (a 1 PB truncate) fills that, not the machine's disk.
MNT="" DAEMON="" DISK=""
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

unmount_disk() {  # after unmount: the store's loop disk (mount -o loop frees its loop device)
    if [[ -n $DISK ]] && grep -qs " $DISK " /proc/mounts; then
        umount "$DISK" || umount -l "$DISK"
    fi
    DISK=""
}

mount_target() {  # mount_target TARGET DIR LOG [cagefs mount options]: DIR/store at DIR/mnt
    local target=$1 dir=$2 log=$3
    shift 3
    STORE=$dir/disk/store
    mkdir -p "$dir/mnt" "$dir/disk"
    truncate -s "${STORE_SIZE:-4G}" "$dir/disk.img"
    mkfs.ext4 -q -F "$dir/disk.img" >"$log" 2>&1
    mount -o loop "$dir/disk.img" "$dir/disk"
    DISK=$dir/disk
    mkdir "$STORE"
    chmod 755 "$dir" "$dir/mnt" "$dir/disk" "$STORE"
    if [[ $target == gocryptfs ]]; then
        gocryptfs -q -init -extpass "$GOCRYPTFS_PASS" -scryptn 10 "$STORE" >>"$log" 2>&1
        gocryptfs -fg -allow_other -extpass "$GOCRYPTFS_PASS" "$STORE" "$dir/mnt" \
            >>"$log" 2>&1 &
    else
        "$PYTHON" -m cagefs keygen -o "$dir/key" >>"$log" 2>&1
        "$PYTHON" -m cagefs init "$STORE" --identity "$dir/key" >>"$log" 2>&1
        "$PYTHON" -m cagefs mount "$STORE" "$dir/mnt" -i "$dir/key" --strategy "$target" \
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

# After the FUSE unmount (the store's disk still mounted): every backing file opens with the Go
# age CLI, and no temp version is left. Prints "backing files N, age -d failures N, temps left N".
check_backing() {  # check_backing STORE KEY
    local store=$1 key=$2 files=0 bad=0 temps=0 path
    while IFS= read -r -d '' path; do
        files=$((files + 1))
        age -d -i "$key" "$path" >/dev/null 2>&1 || bad=$((bad + 1))
    done < <(find "$store" -path "$store/.cagefs" -prune -o -name '*.age' -type f -print0)
    [[ -d $store/.cagefs/tmp ]] && temps=$(find "$store/.cagefs/tmp" -type f | wc -l)
    echo "backing files $files, age -d failures $bad, temps left $temps"
}
