#!/usr/bin/env bash
# Build the image of a GitLab node whose only Python is 3.6 (as RHEL/Alma 8's platform-python and
# CentOS 7's python3), with requests 2.14 (CentOS 7's), for molecule/python36. Tagged
#   codo-hooks-node-py36:<hash of this recipe>   and   codo-hooks-node-py36:test
# Debian bookworm minbase with systemd as init and no python3 package; the interpreter is this
# machine's pyenv build of 3.6 (PYTHON36, default the newest /root/.pyenv/versions/3.6.*), copied
# to /opt/python3.6 and linked as /usr/bin/python3.6 and /usr/libexec/platform-python.
# Skips the build when the hashed tag exists. Exit code 3: no Python 3.6 build on this machine.
# Needs root, mmdebstrap and a running docker engine; shares ../image/lib.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=molecule/image/lib.sh
. "$here/../image/lib.sh"
name=codo-hooks-node-py36
suite=bookworm
requests_version=2.14.2
packages=git,ca-certificates,systemd,systemd-sysv,dbus,procps,sudo,libssl3,libffi8,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libexpat1,libreadline8,libncursesw6

python36=${PYTHON36:-$(ls -d /root/.pyenv/versions/3.6.* 2>/dev/null | sort -V | tail -1 || true)}
if [ -z "$python36" ] || [ ! -x "$python36/bin/python3.6" ]; then
    echo "build.sh: no Python 3.6 build here (set PYTHON36 to its prefix, e.g. /root/.pyenv/versions/3.6.15)" >&2
    exit 3
fi

hash=$( { cat "$here/build.sh" "$image_lib"; "$python36/bin/python3.6" -VV; } | sha256sum | cut -c1-12)
image_ready "$name" "$hash" test && exit 0
need_tools

workdir=$(mktemp -d "${TMPDIR:-/tmp}/codo-image-py36.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
host_mirrors "$workdir" "$suite"
start=$(date +%s)
echo "building $name:$hash with mmdebstrap ($suite, minbase, Python 3.6 from $python36) ..."
# requests 2.14.2 vendors its own urllib3, chardet and idna: one pure-Python wheel.
"$python36/bin/python3.6" -m pip download -q --no-deps -d "$workdir/wheels" "requests==$requests_version"

mmdebstrap "${mmdebstrap_options[@]}" \
    --include="$packages" \
    --customize-hook='echo codo-hooks-node-py36 > "$1/etc/hostname"' \
    --customize-hook="cp -a '$python36' \"\$1/opt/python3.6\"" \
    --customize-hook='rm -rf "$1/opt/python3.6/lib/python3.6/test" "$1/opt/python3.6/lib/python3.6/site-packages/"pip* "$1/opt/python3.6/lib/python3.6/site-packages/"setuptools*' \
    --customize-hook='echo /opt/python3.6/lib > "$1/etc/ld.so.conf.d/python3.6.conf"; chroot "$1" ldconfig' \
    --customize-hook='ln -s /opt/python3.6/bin/python3.6 "$1/usr/bin/python3.6"; mkdir -p "$1/usr/libexec"; ln -s /opt/python3.6/bin/python3.6 "$1/usr/libexec/platform-python"' \
    --customize-hook="cd '$workdir/wheels' && \"$python36/bin/python3.6\" -m zipfile -e requests-$requests_version-*.whl \"\$1/opt/python3.6/lib/python3.6/site-packages/\"" \
    --customize-hook='chroot "$1" /usr/bin/python3.6 -c "import requests, ssl; print(\"python 3.6 in the image: requests\", requests.__version__)"' \
    --customize-hook='! chroot "$1" sh -c "command -v python3"' \
    "$suite" "$workdir/rootfs.tar" "${mirrors[@]}"

import_image "$workdir/rootfs.tar" "$name" "$hash" test '["/sbin/init"]' "codo-hooks node with Python 3.6 only"
echo "built $name:$hash (tagged $name:test) in $(( $(date +%s) - start )) s"
