"""Persistent volumes: the resource, its attachments, and the node side's desired state.

A volume lives in the *volume pool* of one host: the node agent of that host holds a volume
backend (``file``, ``iscsi`` or ``fake``) and converges it to the list of volumes the
controller puts in the host's desired state (docs/adr/0003-volumes.md). The controller decides
(checks, quota, the pool with room, attachment indexes), the node does the work and reports;
every change is an event, and every change that needs the node returns an operation.

States: ``creating -> available <-> attaching -> in-use -> detaching -> available``;
``deleting -> deleted``; ``error``; ``quarantined`` (services/quarantine.py).

This module is the one door to the volume services; the work is done, one noun each, in
``volume_states`` (states, kinds, transitions, events), ``volume_operations`` (when an
operation on a volume is done), ``volume_pools`` (the pool with room), ``volume_lifecycle``
(list, show, create, update), ``volume_copies`` (snapshot, clone, grow),
``volume_attachments`` (attach, detach, the volumes of a new or deleted instance) and
``volume_agent`` (a host's desired volumes and attachments, the node's report).
"""

from __future__ import annotations

from stratuslab.services.volume_agent import apply_report, desired_attachments, desired_volumes
from stratuslab.services.volume_attachments import (
    add_attachment,
    attach,
    attach_at_create,
    check_create_request,
    detach,
    free_index,
    instance_deleted,
    record_attachment,
    release,
)
from stratuslab.services.volume_copies import copy_volume, grow
from stratuslab.services.volume_lifecycle import (
    check_quota,
    create_volume,
    get_volume,
    list_volumes,
    size_from,
    to_wire,
    update,
    visible,
)
from stratuslab.services.volume_operations import evaluate_operations, start_operation
from stratuslab.services.volume_pools import check_free, free_bytes, pick_pool, pool_hosts
from stratuslab.services.volume_states import (
    BOOT_INDEX,
    POOL_FREE,
    POOL_LIVE_SNAPSHOT,
    AttachState,
    GiB,
    MiB,
    VolumeKind,
    VolumeState,
    bump,
    bump_instance,
    record,
    set_state,
    settle,
    touch_host,
)

__all__ = [
    "BOOT_INDEX",
    "POOL_FREE",
    "POOL_LIVE_SNAPSHOT",
    "AttachState",
    "GiB",
    "MiB",
    "VolumeKind",
    "VolumeState",
    "add_attachment",
    "apply_report",
    "attach",
    "attach_at_create",
    "bump",
    "bump_instance",
    "check_create_request",
    "check_free",
    "check_quota",
    "copy_volume",
    "create_volume",
    "desired_attachments",
    "desired_volumes",
    "detach",
    "evaluate_operations",
    "free_bytes",
    "free_index",
    "get_volume",
    "grow",
    "instance_deleted",
    "list_volumes",
    "pick_pool",
    "pool_hosts",
    "record",
    "record_attachment",
    "release",
    "set_state",
    "settle",
    "size_from",
    "start_operation",
    "to_wire",
    "touch_host",
    "update",
    "visible",
]
