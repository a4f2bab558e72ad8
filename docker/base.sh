#!/usr/bin/env bash
# Builds the base image of docker/Dockerfile from Debian packages, for machines that cannot pull from a container
# registry: Debian bookworm (minbase) with its own python3.11 and venv module, committed with buildah as IMAGE.
#
#   docker/base.sh [IMAGE]            # default localhost/twots-base:bookworm; needs root, debootstrap and buildah
#
# DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR choose the mirrors (default deb.debian.org); the image's sources.list
# names the release, its updates and its security suite, so the Dockerfile's apt-get gets the fixes.
set -euo pipefail

image=${1:-localhost/twots-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

rootfs=$(mktemp -d /tmp/twots-base.XXXXXX)
container=""
cleanup() {
    if [[ -n $container ]]; then
        buildah umount "$container" >/dev/null 2>&1 || true
        buildah rm "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$rootfs" "$rootfs.log"
}
trap cleanup EXIT

echo "base: debootstrap bookworm (minbase, python3.11) from $mirror"
debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,ca-certificates bookworm \
    "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
version=$(chroot "$rootfs" python3.11 --version)
cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
# What a slim image leaves out: package lists and caches (the Dockerfile runs apt-get update), docs, man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log

container=$(buildah from scratch)
cp -a "$rootfs"/. "$(buildah mount "$container")"/
buildah umount "$container" >/dev/null
buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --os linux --arch amd64 \
    --label org.opencontainers.image.description="Debian bookworm minbase + python3.11 (docker/base.sh)" "$container"
buildah commit --rm -q "$container" "$image" >/dev/null
container=""
echo "base: $image, $version, $(buildah images --format '{{.Size}}' "$image")"
