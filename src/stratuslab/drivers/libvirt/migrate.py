"""Live migration of a running domain to another libvirt daemon.

:func:`migrate_live` checks what it can before libvirt starts a job (the domain runs, the
destination answers, is another host and holds no clashing domain), rewrites the domain's
migratable XML for the destination when it is given a destination spec, and runs one
libvirt migration (``migrateToURI3`` peer-to-peer, or ``migrate3`` over a second connection)
with ``VIR_MIGRATE_LIVE | PERSIST_DEST | UNDEFINE_SOURCE``: on success the domain runs and is
defined on the destination only.

The destination XML is the running domain's own migratable XML with only host-local parts
replaced (:func:`destination_xml`): disk sources (matched by target), console logs, the
user-mode NIC's port forwards and bridge NICs' host side (matched by MAC). The guest hardware
(PCI addresses, machine type, CPU) is left as the source runs it, so libvirt's ABI check
passes. Disk ``<backingStore>`` chains are dropped, so the destination reads each image's
backing chain from its own copy. The persistent definition is rewritten the same way
(``VIR_MIGRATE_PARAM_PERSIST_XML``), so the next cold boot on the destination uses its paths.

A timer aborts the job (``abortJob``) when ``options.timeout`` expires; the guest then keeps
running on the source. libvirt errors become :class:`~stratuslab.errors.StratusError` with the
``MIGRATION_*`` codes of :mod:`stratuslab.drivers.base`.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
from contextlib import suppress
from typing import Any

from stratuslab.drivers.base import (
    MIGRATION_CONFLICT,
    MIGRATION_FAILED,
    MIGRATION_NOT_RUNNING,
    MIGRATION_REFUSED,
    MIGRATION_SAME_HOST,
    MIGRATION_TIMEOUT,
    MIGRATION_UNREACHABLE,
    MIGRATION_UNSAFE,
    MIGRATION_UNSUPPORTED,
    DiskSpec,
    DomainSpec,
    MigrationOptions,
)
from stratuslab.drivers.libvirt.connection import Connection, libvirt_errors, load_libvirt
from stratuslab.drivers.libvirt.domain_xml import QEMU_NS, STRATUS_NS, user_network_args
from stratuslab.errors import (
    Conflict,
    DriverError,
    HypervisorUnavailable,
    InvalidInput,
    StratusError,
)

_ABORT_RETRY_SECONDS = 0.5

UNREACHABLE_HINT = (
    "check the destination URI, that libvirtd runs there, and that this host may connect to "
    "it (TLS certificates for qemu+tls://, root's SSH key for qemu+ssh://)"
)


def migrate_live(
    source: Connection,
    dom: Any,
    dest_uri: str,
    *,
    dest: DomainSpec | None,
    options: MigrationOptions,
) -> None:
    """Live-migrate ``dom`` (on ``source``) to the libvirt daemon at ``dest_uri``."""
    with libvirt_errors(f"read domain {dom.UUIDString()}"):
        uuid, name = dom.UUIDString(), dom.name()
        active = bool(dom.isActive())
    if not active:
        raise Conflict(
            f"domain {name} is not running; only a running domain can be live-migrated",
            code=MIGRATION_NOT_RUNNING,
            hint="start it first, or move it cold (stop, copy its disks, define it elsewhere)",
        )
    if dest is not None:
        check_same_domain(uuid, name, dest)
    if dest_uri == source.uri:
        raise same_host_error(name, dest_uri)
    target = Connection(dest_uri)
    try:
        dconn = _open_destination(target, name)
        _check_destination(source.get(), dconn, uuid, name, dest_uri)
        params, flags = _parameters(dom, dest, options)
        _run(dom, dconn, dest_uri, params, flags, options)
    finally:
        target.close()


def check_same_domain(uuid: str, name: str, dest: DomainSpec) -> None:
    """``dest`` must describe the domain being moved (same uuid and name)."""
    if _canonical(dest.uuid) != _canonical(uuid) or dest.name != name:
        raise InvalidInput(
            f"the destination spec describes {dest.name} ({dest.uuid}), not {name} ({uuid})",
            hint="a migrated domain keeps its uuid and name; only host-local parts change",
        )


def same_host_error(name: str, dest_uri: str) -> Conflict:
    return Conflict(
        f"cannot live-migrate {name} to {dest_uri}: that is the hypervisor it runs on",
        code=MIGRATION_SAME_HOST,
        hint="name another host's hypervisor (libvirt compares the hosts' UUIDs: two daemons "
        "on one machine need different host_uuid settings)",
    )


def destination_xml(xml: str, dest: DomainSpec) -> str:
    """``xml`` (a domain's XML) with its host-local parts taken from ``dest``.

    Disk sources by target, console logs, the user-mode NIC's forwards and bridge NICs by MAC
    are replaced; ``<backingStore>`` chains of the rewritten disks are dropped. A disk or NIC
    that ``dest`` does not have (or has in excess) is :class:`InvalidInput`: a migration
    cannot change the guest's hardware.
    """
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("stratus", STRATUS_NS)
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is None:
        raise InvalidInput("the domain XML has no devices", hint="pass a libvirt domain XML")
    _rewrite_disks(devices, dest)
    for log in devices.iterfind("*/log"):
        log.set("file", str(dest.console_log))
    _rewrite_nics(devices, dest)
    _rewrite_commandline(root, dest)
    return ET.tostring(root, encoding="unicode")


# -- checks before the job -----------------------------------------------------------------


def _open_destination(target: Connection, name: str) -> Any:
    try:
        return target.get()
    except HypervisorUnavailable as exc:
        raise HypervisorUnavailable(
            f"cannot live-migrate {name}: the destination {target.uri} is unreachable "
            f"({exc.message})",
            code=MIGRATION_UNREACHABLE,
            hint=UNREACHABLE_HINT,
        ) from exc


def _check_destination(sconn: Any, dconn: Any, uuid: str, name: str, dest_uri: str) -> None:
    with libvirt_errors(f"read the capabilities of {dest_uri}"):
        source_host, dest_host = _host_uuid(sconn), _host_uuid(dconn)
    if source_host is not None and source_host == dest_host:
        raise same_host_error(name, dest_uri)
    for found in (_lookup(dconn, "uuid", uuid), _lookup(dconn, "name", name)):
        if found is None:
            continue
        found_uuid, found_name, found_active = found
        if _canonical(found_uuid) != _canonical(uuid) or found_name != name:
            raise Conflict(
                f"cannot live-migrate {name} ({uuid}) to {dest_uri}: it holds domain "
                f"{found_name} ({found_uuid})",
                code=MIGRATION_CONFLICT,
                hint="a domain's name and uuid must be free on the destination",
            )
        if found_active:
            raise Conflict(
                f"cannot live-migrate {name} to {dest_uri}: it already runs there",
                code=MIGRATION_CONFLICT,
                hint="an instance must never run twice: check which host it belongs to",
            )


def _host_uuid(conn: Any) -> str | None:
    element = ET.fromstring(conn.getCapabilities()).find("host/uuid")
    return None if element is None or not element.text else _canonical(element.text.strip())


def _lookup(conn: Any, by: str, key: str) -> tuple[str, str, bool] | None:
    """(uuid, name, active) of the destination's domain with this uuid or name, if any."""
    libvirt = load_libvirt()
    try:
        dom = conn.lookupByUUIDString(key) if by == "uuid" else conn.lookupByName(key)
        return str(dom.UUIDString()), str(dom.name()), bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        message = f"look up domain {key} on the destination: {exc.get_error_message()}"
        raise DriverError(message, hint=UNREACHABLE_HINT) from exc


# -- the job ---------------------------------------------------------------------------------


def _parameters(
    dom: Any, dest: DomainSpec | None, options: MigrationOptions
) -> tuple[dict[str, Any], int]:
    libvirt = load_libvirt()
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    params: dict[str, Any] = {}
    xml_flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
    with libvirt_errors(f"read the definition of {dom.name()}"):
        live = dom.XMLDesc(xml_flags)
        persistent = dom.XMLDesc(xml_flags | libvirt.VIR_DOMAIN_XML_INACTIVE)
    if dest is not None:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = destination_xml(live, dest)
        params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = destination_xml(persistent, dest)
    copied = writable_file_disks(live) if options.copy_storage else []
    if copied:  # with none (network disks only) there is nothing to copy
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = copied
    if options.trust_shared_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if options.peer_to_peer:
        flags |= libvirt.VIR_MIGRATE_PEER2PEER
    if options.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if options.migration_uri is not None:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = options.migration_uri
    if options.bandwidth_mib_s is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(options.bandwidth_mib_s)
    return params, flags


def writable_file_disks(xml: str) -> list[str]:
    """Targets of the disks ``copy_storage`` copies: writable, file-backed, with a source."""
    targets = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is None or source is None or disk.find("readonly") is not None:
            continue
        if disk.get("type") == "file" and disk.get("device", "disk") == "disk":
            targets.append(target.get("dev", ""))
    return [target for target in targets if target]


def _run(
    dom: Any,
    dconn: Any,
    dest_uri: str,
    params: dict[str, Any],
    flags: int,
    options: MigrationOptions,
) -> None:
    libvirt = load_libvirt()
    name = dom.name()
    timed_out, done = threading.Event(), threading.Event()

    def watchdog() -> None:
        # abortJob only stops a job that has one to stop (not during the first handshakes):
        # after the timeout, ask again until the migration call returns.
        if done.wait(options.timeout):
            return
        timed_out.set()
        while not done.is_set():
            with suppress(libvirt.libvirtError):
                dom.abortJob()
            done.wait(_ABORT_RETRY_SECONDS)

    thread = threading.Thread(target=watchdog, name=f"migrate-{name}-watchdog", daemon=True)
    thread.start()
    try:
        if flags & libvirt.VIR_MIGRATE_PEER2PEER:
            dom.migrateToURI3(dest_uri, params, flags)
        else:
            dom.migrate3(dconn, params, flags)
    except libvirt.libvirtError as exc:
        error = migration_error(name, dest_uri, exc, timed_out=timed_out.is_set(), options=options)
        error.details["source_state"] = _source_state(dom)
        raise error from exc
    finally:
        done.set()
        thread.join()


def migration_error(
    name: str, dest_uri: str, exc: Any, *, timed_out: bool, options: MigrationOptions
) -> StratusError:
    """The :class:`StratusError` for a ``libvirtError`` of the migration job."""
    libvirt = load_libvirt()
    code, domain = exc.get_error_code(), exc.get_error_domain()
    text = str(exc.get_error_message() or exc)
    message = f"live migration of {name} to {dest_uri} failed: {text}"
    details = {"libvirt_code": code, "libvirt_domain": domain}
    if timed_out and code == libvirt.VIR_ERR_OPERATION_ABORTED:
        return DriverError(
            f"live migration of {name} to {dest_uri} did not finish within "
            f"{options.timeout:g} s and was aborted; it still runs on the source",
            code=MIGRATION_TIMEOUT,
            hint="a guest that dirties memory faster than the link copies it never converges: "
            "raise the bandwidth cap or the timeout, or migrate it cold",
            details=details,
        )
    if code == libvirt.VIR_ERR_MIGRATE_UNSAFE:
        return DriverError(
            message,
            code=MIGRATION_UNSAFE,
            hint="copy the disks (copy_storage), or put them on a filesystem libvirt knows to "
            "be shared, or vouch for the storage (trust_shared_storage)",
            details=details,
        )
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
        return DriverError(
            message,
            code=MIGRATION_UNSUPPORTED,
            hint="this hypervisor driver cannot live-migrate; move the domain cold",
            details=details,
        )
    if "same host" in text:
        return Conflict(message, code=MIGRATION_SAME_HOST, hint=same_host_error("", "").hint)
    if code == libvirt.VIR_ERR_NO_CONNECT or domain in (
        libvirt.VIR_FROM_RPC,
        libvirt.VIR_FROM_REMOTE,
    ):
        return HypervisorUnavailable(
            message, code=MIGRATION_UNREACHABLE, hint=UNREACHABLE_HINT, details=details
        )
    if code == libvirt.VIR_ERR_OPERATION_FAILED and "already" in text:
        return Conflict(
            message,
            code=MIGRATION_CONFLICT,
            hint="a domain's name and uuid must be free on the destination",
            details=details,
        )
    refused = (
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
        libvirt.VIR_ERR_INVALID_ARG,
    )
    if code in refused:
        return DriverError(
            message,
            code=MIGRATION_REFUSED,
            hint="the destination refused the domain as described; check that the destination "
            "spec keeps the guest hardware and that both hosts run compatible QEMU and CPUs",
            details=details,
        )
    return DriverError(
        message,
        code=MIGRATION_FAILED,
        hint="see both hosts' libvirtd logs and the domain's QEMU log on the destination",
        details=details,
    )


def _source_state(dom: Any) -> str:
    """The source's view of the domain after a failure: ``running``, ``paused``, ``missing``."""
    libvirt = load_libvirt()
    try:
        state = dom.state()[0]
    except libvirt.libvirtError:
        return "missing"
    return {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    }.get(state, "other")


# -- rewriting the XML -----------------------------------------------------------------------


def _rewrite_disks(devices: ET.Element, dest: DomainSpec) -> None:
    wanted: dict[str, DiskSpec] = {disk.target: disk for disk in dest.disks}
    wanted.update({volume.target: volume.disk_spec() for volume in dest.volumes})
    seen: set[str] = set()
    for element in devices.iterfind("disk"):
        target_element = element.find("target")
        target = "" if target_element is None else target_element.get("dev", "")
        spec = wanted.get(target)
        if spec is None:
            raise InvalidInput(
                f"the destination spec of {dest.name} has no disk {target}",
                hint="give every disk of the running domain a destination path",
            )
        seen.add(target)
        _rewrite_disk(element, spec, dest.name)
    extra = sorted(set(wanted) - seen)
    if extra:
        raise InvalidInput(
            f"the destination spec of {dest.name} has disks the running domain lacks: "
            f"{', '.join(extra)}",
            hint="attach them after the migration",
        )


def _rewrite_disk(element: ET.Element, spec: DiskSpec, name: str) -> None:
    kind = "file" if spec.network is None else "network"
    if element.get("type") != kind:
        raise InvalidInput(
            f"disk {spec.target} of {name} is a {element.get('type')} disk on the source and "
            f"a {kind} disk in the destination spec",
            hint="a migration cannot change how a disk is reached",
        )
    source = element.find("source")
    if source is None:
        return  # an empty CD-ROM drive
    for chain in element.findall("backingStore"):
        element.remove(chain)
    if spec.network is None:
        source.set("file", str(spec.path))
        return
    source.set("protocol", spec.network.protocol)
    source.set("name", spec.network.name)
    for host in source.findall("host"):
        source.remove(host)
    ET.SubElement(source, "host", name=spec.network.host, port=str(spec.network.port))


def _rewrite_nics(devices: ET.Element, dest: DomainSpec) -> None:
    by_mac = {nic.mac.lower(): nic for nic in dest.nics}
    for element in devices.iterfind("interface"):
        mac_element = element.find("mac")
        mac = "" if mac_element is None else mac_element.get("address", "").lower()
        nic = by_mac.pop(mac, None)
        if nic is None:
            raise InvalidInput(
                f"the destination spec of {dest.name} has no NIC {mac}",
                hint="keep every NIC of the running domain (by MAC)",
            )
        source = element.find("source")
        if nic.bridge is not None and source is not None:
            source.set("bridge", nic.bridge)
        target = element.find("target")
        if target is not None:
            element.remove(target)
        if nic.target is not None:
            ET.SubElement(element, "target", dev=nic.target)
    if by_mac:
        raise InvalidInput(
            f"the destination spec of {dest.name} has NICs the running domain lacks: "
            f"{', '.join(sorted(by_mac))}",
            hint="hot-plug them after the migration",
        )


def _rewrite_commandline(root: ET.Element, dest: DomainSpec) -> None:
    """The user-mode NIC's forwards from ``dest``; a source without one keeps none (libvirt's
    test driver drops ``<qemu:commandline>``)."""
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is None:
        return
    if not dest.user_network:
        raise InvalidInput(
            f"the destination spec of {dest.name} drops the user-mode NIC",
            hint="a migration cannot change the guest's NICs",
        )
    for arg in commandline.findall(f"{{{QEMU_NS}}}arg"):
        commandline.remove(arg)
    for value in user_network_args(dest):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)


def _canonical(uuid: str) -> str:
    try:
        return str(uuidlib.UUID(uuid))
    except ValueError:
        return uuid
