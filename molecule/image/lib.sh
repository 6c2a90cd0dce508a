# shellcheck shell=bash
# What molecule/image/build.sh and molecule/image-py36/build.sh share: sourced, not run. Each
# builds a Debian minbase rootfs with mmdebstrap from this machine's own Debian mirror (no image
# registry is reachable) and imports it into docker as <name>:<hash of its recipe>, tagged
# <name>:<alias> too. The recipe's hash covers this file.

image_lib="${BASH_SOURCE[0]}"

# image_ready NAME HASH ALIAS: true (tagged ALIAS, and said) when the image of this recipe exists;
# FORCE=1 rebuilds it anyway.
image_ready() {
    local name=$1 hash=$2 alias_tag=$3
    [ "${FORCE:-0}" != 1 ] && docker image inspect "$name:$hash" >/dev/null 2>&1 || return 1
    docker tag "$name:$hash" "$name:$alias_tag"
    echo "image $name:$hash is up to date (tagged $name:$alias_tag)"
}

# need_tools: mmdebstrap (root mode) and root, or one line saying which is missing.
need_tools() {
    command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "build.sh: run as root (mmdebstrap root mode)" >&2; exit 1; }
}

# host_mirrors WORKDIR SUITE: sets `mirrors` to this machine's own Debian sources (the mirror it
# reaches) with its release's name turned into SUITE: on a Debian 13 machine too, a bookworm
# image comes from the same mirror.
host_mirrors() {
    local workdir=$1 suite=$2 host_codename f
    mirrors=()
    host_codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources; do
        if [ -n "$host_codename" ] && [ -s "$f" ] && grep -Eq '^[[:space:]]*[^#[:space:]]' "$f"; then
            sed "s/\b$host_codename\b/$suite/g" "$f" >"$workdir/${f##*/}"
            mirrors+=("$workdir/${f##*/}")
        fi
    done
}

# The mmdebstrap options both images take:
# - apt options: the machine's apt is set to accept Release files past their Valid-Until date;
#   mmdebstrap runs its own apt config, so say it again.
# - docs, man pages and locales are left out to keep the image small.
# - a fresh machine-id on first boot, and the units a container cannot or need not run masked,
#   so that systemd as PID 1 comes up clean.
# shellcheck disable=SC2034  # used by the scripts that source this file
mmdebstrap_options=(
    --variant=minbase
    --aptopt='Acquire::Check-Valid-Until "false"'
    --aptopt='Acquire::Retries "3"'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --customize-hook='rm -f "$1/etc/machine-id" "$1/var/lib/dbus/machine-id"; touch "$1/etc/machine-id"'
    --customize-hook='chroot "$1" systemctl mask getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service systemd-firstboot.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount systemd-logind.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1'
)

# import_image TARBALL NAME HASH ALIAS CMD MESSAGE: the rootfs as NAME:HASH (CMD its command, a
# JSON list), tagged ALIAS; the images of older recipes dropped (kept while a container uses one).
import_image() {
    local tarball=$1 name=$2 hash=$3 alias_tag=$4 cmd=$5 message=$6 old
    docker import \
        --change "CMD $cmd" \
        --change 'LABEL org.codo.project=codo-hooks' \
        --change "LABEL org.codo.recipe=$hash" \
        --change 'ENV container=docker' \
        --message "$message, recipe $hash" \
        "$tarball" "$name:$hash" >/dev/null
    docker tag "$name:$hash" "$name:$alias_tag"
    for old in $(docker images "$name" --format '{{.Tag}}'); do
        case "$old" in "$hash"|"$alias_tag"|"<none>") ;; *) docker rmi "$name:$old" >/dev/null 2>&1 || true ;; esac
    done
}
