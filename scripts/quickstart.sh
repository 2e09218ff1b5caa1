#!/usr/bin/env bash
# Quick start: install cagefs, make a demo store with its own identity file, mount it, write a
# file, and show what lands on disk. Run as root; safe to run again (each step is skipped when
# already done).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

KEY=/root/.config/cagefs/demo.key
STORE=/var/lib/cagefs-demo/store
MNT=/mnt/cagefs-demo
CAGEFS="$REPO/.venv/bin/cagefs"

if [[ $(id -u) -ne 0 ]]; then
    echo "quickstart: run as root (it writes $STORE, $KEY and mounts $MNT)" >&2
    exit 1
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "install (system packages and ./.venv)"
bash scripts/install.sh

step "identity file $KEY"
if [[ -f $KEY ]]; then
    echo "already there"
else
    mkdir -p -m 700 "$(dirname "$KEY")"
    show "$CAGEFS" keygen -o "$KEY"
fi

step "store $STORE"
if [[ -f $STORE/.cagefs/config.toml ]]; then
    echo "already a cagefs store"
else
    mkdir -p "$(dirname "$STORE")"
    show "$CAGEFS" init "$STORE" --identity "$KEY"
fi

step "mount at $MNT"
mkdir -p "$MNT"
if mountpoint -q "$MNT" 2>/dev/null && ! ls "$MNT" >/dev/null 2>&1; then
    echo "a dead mount is left at $MNT (its daemon was killed): clearing it"
    fusermount3 -u -z "$MNT"
fi
if mountpoint -q "$MNT"; then
    echo "already mounted (to mount it again later: $CAGEFS mount $STORE $MNT -i $KEY)"
else
    show "$CAGEFS" mount "$STORE" "$MNT" -i "$KEY"
fi

step "write a file through the mount"
echo "hello from cagefs, $(date -u +%FT%TZ)" >"$MNT/hello.txt"
show sync "$MNT/hello.txt" # fsync publishes at once (otherwise within publish_interval)
show cat "$MNT/hello.txt"
show ls -l "$MNT"

step "what is on disk: an age file per file"
show ls -l "$STORE"
show head -n 2 "$STORE/hello.txt.age"
echo "..."

step "decrypt a backing file with the stock age CLI"
show age -d -i "$KEY" "$STORE/hello.txt.age"

cat <<EOT

Done. The mount stays up in the background.
  decrypt any backing file:  age -d -i $KEY $STORE/FILE.age
  unmount:                   $CAGEFS umount $MNT
  mount again:               $CAGEFS mount $STORE $MNT -i $KEY
EOT
