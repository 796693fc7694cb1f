"""One entry point for every context method: ``build_context(method, spec) -> (label, files)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stratuslab.context.configdrive import CONFIGDRIVE_LABEL, build_configdrive
from stratuslab.context.iso import SEED_LABEL, write_seed_iso
from stratuslab.context.nocloud import build_nocloud, network_config_v2
from stratuslab.context.opennebula import OPENNEBULA_LABEL, build_opennebula
from stratuslab.context.spec import ContextMethod, ContextSpec
from stratuslab.context.userdata import check_user_data_size

Files = dict[str, bytes]

LABELS: dict[ContextMethod, str] = {
    ContextMethod.NOCLOUD: SEED_LABEL,
    ContextMethod.CONFIGDRIVE: CONFIGDRIVE_LABEL,
    ContextMethod.OPENNEBULA: OPENNEBULA_LABEL,
}


def build_context(method: ContextMethod, spec: ContextSpec) -> tuple[str, Files]:
    """The volume label and the files (by path) of ``spec``'s seed disk for ``method``."""
    if spec.user_data is not None:
        check_user_data_size(spec.user_data)
    return LABELS[method], _BUILDERS[method](spec)


def write_context_iso(method: ContextMethod, spec: ContextSpec, path: Path) -> Path:
    """Build the context and write it as an ISO 9660 image at ``path`` (atomically)."""
    label, files = build_context(method, spec)
    write_seed_iso(files, path, label=label)
    return path


def _nocloud(spec: ContextSpec) -> Files:
    return build_nocloud(
        instance_id=spec.instance_id,
        hostname=spec.hostname,
        ssh_keys=spec.ssh_keys,
        user_data=spec.user_data,
        network_config=None if spec.network is None else network_config_v2(spec.network),
        extra=spec.extra,
    )


def _configdrive(spec: ContextSpec) -> Files:
    return build_configdrive(
        instance_id=spec.instance_id,
        hostname=spec.hostname,
        ssh_keys=spec.ssh_keys,
        user_data=spec.user_data,
        nics=spec.network,
        extra=spec.extra,
    )


def _opennebula(spec: ContextSpec) -> Files:
    return build_opennebula(
        instance_id=spec.instance_id,
        hostname=spec.hostname,
        ssh_keys=spec.ssh_keys,
        user_data=spec.user_data,
        nics=spec.network,
        extra=spec.extra,
    )


_BUILDERS: dict[ContextMethod, Callable[[ContextSpec], Files]] = {
    ContextMethod.NOCLOUD: _nocloud,
    ContextMethod.CONFIGDRIVE: _configdrive,
    ContextMethod.OPENNEBULA: _opennebula,
}
