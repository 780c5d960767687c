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

# This kind of machine (a VM without systemd or overlayfs-in-userns) needs: vfs storage, cgroupfs, runc, file
# events, host networking, and ulimits no higher than the host allows.
mkdir -p /etc/containers
if ! grep -q 'driver = "vfs"' /etc/containers/storage.conf 2>/dev/null; then
    say "configuring /etc/containers/storage.conf (vfs)"
    cat > /etc/containers/storage.conf <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
if ! grep -q 'cgroup_manager = "cgroupfs"' /etc/containers/containers.conf 2>/dev/null; then
    say "configuring /etc/containers/containers.conf (cgroupfs, runc, host network)"
    cat > /etc/containers/containers.conf <<'CONF'
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
fi

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
