#!/usr/bin/env bash
# Make a Debian 12 machine without a Docker engine build and run this project's images with podman, for
# linux/amd64 and (under qemu emulation) linux/arm64. Idempotent; run as root. `make docker-test` calls it.
#
# No registry is reachable here, so the Dockerfile's base (debian:bookworm-slim) is made with debootstrap from
# Debian's package mirror and imported under that name, once per architecture; builds use --pull=never.
set -euo pipefail

BASE_NAME=docker.io/library/debian:bookworm-slim
ARCHES=${ARCHES:-"amd64 arm64"}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
say() { echo "podman-setup: $*"; }

packages=(podman buildah runc debootstrap qemu-user-static binfmt-support)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# podman's configuration for these builds is the project's own (deploy/containers/): the host's
# /etc/containers/*.conf are neither changed nor read. deploy/smoke_test.py sets the same two variables; export
# them too to use these images by hand.
DEPLOY=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$DEPLOY/containers/containers.conf}
export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$DEPLOY/containers/storage.conf}
say "podman configuration: $CONTAINERS_CONF, $CONTAINERS_STORAGE_CONF"

# arm64 binaries run through qemu-user-static's binfmt handler.
if [[ " $ARCHES " == *" arm64 "* ]]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || { say "qemu-aarch64 binfmt is not registered"; exit 1; }
fi

for arch in $ARCHES; do
    tag="localhost/debian-base:bookworm-slim-$arch"
    if podman image exists "$tag"; then
        say "base image $tag exists"
    else
        say "building base image $tag with debootstrap (a few minutes; arm64 runs under emulation)"
        root=$(mktemp -d /var/tmp/debootstrap-$arch.XXXXXX)
        chmod 755 "$root"  # it becomes the image's /, which the unprivileged app user must traverse
        debootstrap --variant=minbase --arch "$arch" bookworm "$root" "$MIRROR" >/dev/null
        # Slim it the way debian:*-slim is: no package lists, docs or man pages.
        chroot "$root" apt-get clean
        rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/cache/*
        tar -C "$root" -c . | podman import --arch "$arch" --os linux \
            --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            - "$tag" >/dev/null
        rm -rf "$root"
    fi
done

# FROM debian:bookworm-slim must find the right architecture: a local manifest list holding each base.
if ! podman manifest exists "$BASE_NAME" 2>/dev/null; then
    podman image exists "$BASE_NAME" && podman rmi "$BASE_NAME" >/dev/null
    podman manifest create "$BASE_NAME" >/dev/null
fi
for arch in $ARCHES; do
    if ! podman manifest inspect "$BASE_NAME" | grep -q "\"architecture\": \"$arch\""; then
        podman manifest add "$BASE_NAME" "containers-storage:localhost/debian-base:bookworm-slim-$arch" >/dev/null
        say "manifest $BASE_NAME: added $arch"
    fi
done
say "ready"
