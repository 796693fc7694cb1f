#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to run and test StratusLab:
# Debian packages, the virtualenv, libvirt daemons when no init system starts them,
# and /dev/kvm permissions. Idempotent: run it as often as you like.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config
  qemu-system-x86 qemu-utils qemu-block-extra
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  postgresql
  xorriso busybox-static dropbear-bin extlinux syslinux-common mtools dosfstools
  e2fsprogs cpio kmod iproute2 openssh-client procps
  debootstrap cloud-init nasm
  dnsmasq-base nftables iputils-ping netcat-openbsd
  tgt xfsprogs btrfs-progs
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo ">> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "warning: apt-get update reported errors (unreachable extra sources?)"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cloud-init is installed for its datasource readers and schema (tests, validation): it must
# never configure this host.
if [ -d /etc/cloud ] && [ ! -e /etc/cloud/cloud-init.disabled ]; then
  touch /etc/cloud/cloud-init.disabled
  for s in cloud-init-local cloud-init cloud-config cloud-final; do
    update-rc.d "$s" disable >/dev/null 2>&1 || true
  done
fi

if [ ! -x .venv/bin/python ]; then
  echo ">> creating the virtualenv"
  python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] || [ requirements.lock -nt .venv/.installed ]; then
  echo ">> installing Python dependencies"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c requirements.lock -e '.[dev]'
  touch .venv/.installed
fi

# libvirt's QEMU runs as libvirt-qemu (group kvm). Elsewhere /dev/kvm may belong to another
# group; libvirt then re-probes QEMU on every start (tens of seconds each).
if [ -e /dev/kvm ]; then
  if [ "$(stat -c %G /dev/kvm)" != kvm ] || [ "$(( 0$(stat -c %a /dev/kvm) & 060 ))" -ne 48 ]; then
    echo ">> giving /dev/kvm to group kvm (mode 660)"
    chgrp kvm /dev/kvm && chmod 660 /dev/kvm
  fi
fi

# Start the libvirt daemons when no init system runs them.
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  echo ">> starting virtlogd and libvirtd"
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
  for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
  virsh -c qemu:///system version >/dev/null
fi
echo ">> host ready"
