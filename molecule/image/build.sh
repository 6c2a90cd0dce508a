#!/usr/bin/env bash
# Build the Debian bookworm image the Molecule scenarios run on, from Debian's
# packages (no registry is reachable), and tag it
#   codo-hooks-node:<hash of this recipe>   and   codo-hooks-node:test
# Skips the build when the hashed tag already exists. What it shares with
# molecule/image-py36/build.sh is in lib.sh beside it.
#
# Needs root, mmdebstrap and a running docker engine.
# Env: IMAGE_NAME (codo-hooks-node), IMAGE_TAG_ALIAS (test), FORCE=1 to rebuild.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=molecule/image/lib.sh
. "$here/lib.sh"
name=${IMAGE_NAME:-codo-hooks-node}
alias_tag=${IMAGE_TAG_ALIAS:-test}
suite=bookworm

# The recipe is this script, the shared part and the package list: hash them all.
hash=$(cat "$here/build.sh" "$image_lib" "$here/packages.txt" | sha256sum | cut -c1-12)
image_ready "$name" "$hash" "$alias_tag" && exit 0
need_tools

packages=$(grep -Ev '^[[:space:]]*(#|$)' "$here/packages.txt" | tr -s '[:space:]' ',' | sed 's/,$//')
workdir=$(mktemp -d "${TMPDIR:-/tmp}/codo-image.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
host_mirrors "$workdir" "$suite"

start=$(date +%s)
echo "building $name:$hash with mmdebstrap ($suite, minbase) ..."
# Beyond the shared options: the apt lists are kept (skip cleanup/apt/lists) so that ansible's
# apt module can resolve already-installed packages with no mirror at hand; apt in the container
# accepts old Release files too; sshd is there for the executor scenario but not started.
mmdebstrap "${mmdebstrap_options[@]}" \
    --include="$packages" \
    --skip=cleanup/apt/lists \
    --customize-hook='echo codo-hooks-node > "$1/etc/hostname"' \
    --customize-hook='printf "Acquire::Check-Valid-Until \"false\";\n" > "$1/etc/apt/apt.conf.d/99codo-valid-until"' \
    --customize-hook='chroot "$1" systemctl disable ssh.service >/dev/null 2>&1 || true' \
    --customize-hook='mkdir -p "$1/run/sshd"' \
    "$suite" "$workdir/rootfs.tar" "${mirrors[@]}"

import_image "$workdir/rootfs.tar" "$name" "$hash" "$alias_tag" '["sleep", "infinity"]' "codo-hooks test node"
echo "built $name:$hash (tagged $name:$alias_tag) in $(( $(date +%s) - start )) s"
