#!/usr/bin/env bash
# Install everything cagefs needs on Debian 12, idempotently: system packages, then ./.venv.
# With --system, also put it where the system looks (as root): /usr/local/bin/cagefs,
# /sbin/mount.fuse.cagefs (mount -t fuse.cagefs, fstab), the systemd units, the man page and
# bash/zsh completion (generated from the argparse parser by scripts/gen-docs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
system=false
case "${1:-}" in
    --system) system=true ;;
    "") ;;
    *) echo "usage: $0 [--system]" >&2; exit 2 ;;
esac

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev patch age gocryptfs
              sqlite3 rsync git openssh-client procps systemd fio zsh)
# pyfuse3, built from its source with scripts/patches/, in this order (cagefs works on a stock
# pyfuse3 too): pyfuse3-borrowed-write-buffers.patch, write() is lent libfuse's buffer instead
# of a copy; pyfuse3-inline-session-loop.patch, a request whose handler does not suspend costs
# no pass through trio's scheduler; pyfuse3-conn-want.patch, the filesystem chooses FUSE
# capabilities (cagefs declines auto_inval_data: the kernel keeps pages across a new mtime).
PYFUSE3_PATCHES=(pyfuse3-borrowed-write-buffers.patch pyfuse3-inline-session-loop.patch
                 pyfuse3-conn-want.patch)
PYFUSE3=pyfuse3-3.5.0
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true

# Each patch leaves a mark in the module: an install with fewer patches is rebuilt.
patched() {
    .venv/bin/python -c 'import pyfuse3
pyfuse3.BORROWED_WRITE_BUFFERS
pyfuse3.INLINE_SESSION_LOOP
pyfuse3.CHOSEN_CAPABILITIES' 2>/dev/null
}
if ! patched; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: "${PYFUSE3/-/==}" -d "$build" \
        2>&1 | grep -v '^WARNING: Location' || true
    echo "$PYFUSE3_SHA256  $build/$PYFUSE3.tar.gz" | sha256sum --check --quiet
    tar xzf "$build/$PYFUSE3.tar.gz" -C "$build"
    for p in "${PYFUSE3_PATCHES[@]}"; do
        patch --quiet -d "$build/$PYFUSE3" -p1 < "scripts/patches/$p"
    done
    .venv/bin/python -m pip install -q --no-deps --force-reinstall "$build/$PYFUSE3" \
        2>&1 | grep -v '^WARNING: Location' || true
fi
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import cagefs, pyfuse3, trio, pyrage' # fail loudly if the install did not work
patched || { echo "install.sh: the patched pyfuse3 did not install" >&2; exit 1; }

if $system; then
    # Links, not copies: the venv stays the one installation, and an update of it updates these.
    ln -sfn "$PWD/.venv/bin/cagefs" /usr/local/bin/cagefs
    ln -sfn "$PWD/.venv/bin/cagefs" /sbin/mount.fuse.cagefs
    install -d /usr/local/share/man/man1 /usr/local/share/bash-completion/completions \
        /usr/local/share/zsh/site-functions /etc/systemd/system /etc/systemd/user
    docs=$(mktemp -d)
    PYTHON=.venv/bin/python scripts/gen-docs.sh "$docs"
    install -m 0644 "$docs/cagefs.1" /usr/local/share/man/man1/cagefs.1
    install -m 0644 "$docs/cagefs.bash" /usr/local/share/bash-completion/completions/cagefs
    install -m 0644 "$docs/_cagefs" /usr/local/share/zsh/site-functions/_cagefs
    rm -rf "$docs"
    # The units run /usr/local/bin/cagefs, linked above.
    install -m 0644 systemd/cagefs@.service /etc/systemd/system/cagefs@.service
    sed 's|%h/.local/bin/cagefs|/usr/local/bin/cagefs|' systemd/user/cagefs@.service \
        >/etc/systemd/user/cagefs@.service
    if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
    echo "installed: /usr/local/bin/cagefs, /sbin/mount.fuse.cagefs, cagefs(1), completions, units"
fi
