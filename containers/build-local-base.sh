#!/usr/bin/env bash
# Build a local stand-in for the upstream `python:3.11-slim` base image, for
# machines that cannot reach a container registry (CI, air-gapped sites).
#
# debootstrap a minimal Debian with python3 + venv, then import the root
# filesystem into podman's local storage. Production builds use the real
# upstream base and never need this.
#
# Usage: containers/build-local-base.sh [IMAGE] [SUITE] [MIRROR]
#   IMAGE   default localhost/loopstream-base:bookworm
#   SUITE   default bookworm (ships Python 3.11, matching the project's venv)
#   MIRROR  default http://deb.debian.org/debian
# Needs root (debootstrap), podman. Takes a few minutes, mostly downloads.
set -euo pipefail
image="${1:-localhost/loopstream-base:bookworm}"
suite="${2:-bookworm}"
mirror="${3:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
  echo "build-local-base: $image already present" >&2
  exit 0
fi
rootfs="$(mktemp -d /var/tmp/loopstream-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

# minbase + python3-venv: the same things python:3.11-slim gives (an
# interpreter that can create a venv with pip); ca-certificates for TLS.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" >&2
# Keep the image small: no package lists, caches or docs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
tar --numeric-owner -C "$rootfs" -c . \
  | podman import --change 'CMD ["python3"]' - "$image" >&2
echo "$image"
