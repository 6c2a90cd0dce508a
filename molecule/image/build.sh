#!/usr/bin/env bash
# Build the Debian bookworm image the Molecule scenarios run on, from Debian's
# packages (no registry is reachable), and tag it
#   codo-hooks-node:<hash of this recipe>   and   codo-hooks-node:test
# Skips the build when the hashed tag already exists.
#
# Needs root, mmdebstrap and a running docker engine.
# Env: IMAGE_NAME (codo-hooks-node), IMAGE_TAG_ALIAS (test), FORCE=1 to rebuild.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${IMAGE_NAME:-codo-hooks-node}
alias_tag=${IMAGE_TAG_ALIAS:-test}
suite=bookworm

# The recipe is this script and the package list: hash both.
hash=$(cat "$here/build.sh" "$here/packages.txt" | sha256sum | cut -c1-12)
image="$name:$hash"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    docker tag "$image" "$name:$alias_tag"
    echo "image $image is up to date (tagged $name:$alias_tag)"
    exit 0
fi

command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (mmdebstrap root mode)" >&2; exit 1; }

packages=$(grep -Ev '^[[:space:]]*(#|$)' "$here/packages.txt" | tr -s '[:space:]' ',' | sed 's/,$//')

workdir=$(mktemp -d "${TMPDIR:-/tmp}/codo-image.XXXXXX")
trap 'rm -rf "$workdir"' EXIT

# This machine's own Debian sources (the mirror it reaches), with its release's name turned
# into $suite: on a Debian 13 machine too, the bookworm image comes from the same mirror.
mirrors=()
host_codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
for f in /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources; do
    if [ -n "$host_codename" ] && [ -s "$f" ] && grep -Eq '^[[:space:]]*[^#[:space:]]' "$f"; then
        sed "s/\b$host_codename\b/$suite/g" "$f" >"$workdir/${f##*/}"
        mirrors+=("$workdir/${f##*/}")
    fi
done
tarball="$workdir/rootfs.tar"

start=$(date +%s)
echo "building $image with mmdebstrap ($suite, minbase) ..."
# - apt options: the machine's apt is set to accept Release files past their
#   Valid-Until date; mmdebstrap runs its own apt config, so say it again.
# - the apt lists are kept (skip cleanup/apt/lists) so that ansible's apt
#   module can resolve already-installed packages with no mirror at hand.
# - docs, man pages and locales are left out to keep the image small.
# - customize hooks make the rootfs fit to run in a container, with or
#   without systemd as PID 1.
mmdebstrap \
    --variant=minbase \
    --include="$packages" \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --skip=cleanup/apt/lists \
    --customize-hook='echo codo-hooks-node > "$1/etc/hostname"' \
    --customize-hook='rm -f "$1/etc/machine-id" "$1/var/lib/dbus/machine-id"; touch "$1/etc/machine-id"' \
    --customize-hook='printf "Acquire::Check-Valid-Until \"false\";\n" > "$1/etc/apt/apt.conf.d/99codo-valid-until"' \
    --customize-hook='chroot "$1" systemctl mask getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service systemd-firstboot.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount systemd-logind.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1' \
    --customize-hook='chroot "$1" systemctl disable ssh.service >/dev/null 2>&1 || true' \
    --customize-hook='mkdir -p "$1/run/sshd"' \
    "$suite" "$tarball" "${mirrors[@]}"

docker import \
    --change 'CMD ["sleep", "infinity"]' \
    --change 'LABEL org.codo.project=codo-hooks' \
    --change "LABEL org.codo.recipe=$hash" \
    --change 'ENV container=docker' \
    --message "codo-hooks test node, recipe $hash" \
    "$tarball" "$image" >/dev/null
docker tag "$image" "$name:$alias_tag"
# Drop the images of older recipes (kept while a container still uses one).
for old in $(docker images "$name" --format '{{.Tag}}'); do
    case "$old" in "$hash"|"$alias_tag"|"<none>") ;; *) docker rmi "$name:$old" >/dev/null 2>&1 || true ;; esac
done
echo "built $image (tagged $name:$alias_tag) in $(( $(date +%s) - start )) s"
