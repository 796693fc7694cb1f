#!/bin/sh
# A second, private libvirtd (QEMU driver only) beside the system one, for live-migration tests.
#
#   scripts/second-libvirtd.sh ROOT          run it in the foreground (its PID is libvirtd's)
#   scripts/second-libvirtd.sh --stop ROOT   destroy its domains, stop it, remove ROOT
#
# ROOT (created, mode 0755, e.g. /var/tmp/stratus-lv2) holds the daemon's own /etc/libvirt,
# /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, bind-mounted over the
# real ones in a private mount namespace (unshare --mount), so the system daemon's files, sockets
# and domains are untouched. It gets its own virtlogd, a random host_uuid (libvirt refuses a
# migration between daemons with the same host UUID), no cgroup controllers (cgroup names are
# derived from domain ids, which the two daemons would both count from 1) and its own migration
# port range. The network namespace is shared: QEMU's migration stream and forwarded ports use
# the host's loopback. Clients connect with
#
#   qemu+unix:///system?socket=ROOT/run/libvirt-sock
#
# Needs root, util-linux unshare and libvirt-daemon (libvirtd, virtlogd).
set -eu

if [ "${1:-}" = --stop ]; then
    root=$2
    uri="qemu+unix:///system?socket=$root/run/libvirt-sock"
    for dom in $(virsh -q -c "$uri" list --all --name 2>/dev/null); do
        virsh -q -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
        virsh -q -c "$uri" undefine "$dom" >/dev/null 2>&1 || true
    done
    for pidfile in "$root/libvirtd.pid" "$root/virtlogd.pid" "$root"/run/qemu/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only a process that really belongs to ROOT (guards against a recycled PID).
        if [ -n "$pid" ] && tr "\0" " " 2>/dev/null <"/proc/$pid/cmdline" | grep -q -e "$root" -e qemu; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    sleep 1
    rm -rf "$root"
    exit 0
fi

if [ "${1:-}" = --inside ]; then
    root=$2
    mount --bind "$root/etc" /etc/libvirt
    mount --bind "$root/run" /run/libvirt
    mount --bind "$root/lib" /var/lib/libvirt
    mount --bind "$root/cache" /var/cache/libvirt
    mount --bind "$root/log" /var/log/libvirt
    virtlogd -d -p "$root/virtlogd.pid"
    LIBVIRT_DRIVER_DIR=$root/drivers
    export LIBVIRT_DRIVER_DIR
    exec libvirtd -f /etc/libvirt/libvirtd.conf -p "$root/libvirtd.pid"
fi

root=${1:?usage: $0 ROOT | --stop ROOT}
[ "$(id -u)" = 0 ] || { echo "second-libvirtd: needs root" >&2; exit 1; }
mkdir -p "$root"
chmod 0755 "$root"
for dir in etc run lib cache log drivers; do
    mkdir -p "$root/$dir"
done
qemu_driver=$(ls /usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so \
    /usr/lib64/libvirt/connection-driver/libvirt_driver_qemu.so 2>/dev/null | head -n 1)
[ -n "$qemu_driver" ] || { echo "second-libvirtd: libvirt's QEMU driver module not found" >&2; exit 1; }
ln -sf "$qemu_driver" "$root/drivers/"
if [ ! -f "$root/etc/libvirtd.conf" ]; then
    cat >"$root/etc/libvirtd.conf" <<EOF
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
fi
if [ ! -f "$root/etc/qemu.conf" ]; then
    cat >"$root/etc/qemu.conf" <<EOF
cgroup_controllers = [ ]
migration_port_min = 49300
migration_port_max = 49363
EOF
fi
exec unshare --mount --propagation private -- "$0" --inside "$root"
