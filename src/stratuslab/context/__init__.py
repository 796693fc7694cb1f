"""Contextualization: the data a guest reads at boot.

Three delivery methods share one :class:`ContextSpec`: cloud-init NoCloud (``cidata``),
OpenStack ConfigDrive v2 (``config-2``) and OpenNebula ``context.sh`` (``CONTEXT``).
:func:`build_context` returns the label and files of the seed disk, :func:`write_seed_iso`
writes them as an ISO. User data is assembled by :mod:`stratuslab.context.userdata` and checked
with cloud-init's schema by :mod:`stratuslab.context.schema`.
"""

from __future__ import annotations

from stratuslab.context.build import build_context, write_context_iso
from stratuslab.context.configdrive import build_configdrive
from stratuslab.context.iso import read_seed_iso, write_seed_iso
from stratuslab.context.nocloud import build_nocloud, network_config_v2
from stratuslab.context.opennebula import build_opennebula
from stratuslab.context.schema import validate_cloud_config, validate_user_data
from stratuslab.context.spec import ContextMethod, ContextSpec, Nic, parse_pair
from stratuslab.context.userdata import (
    MAX_USER_DATA,
    PartType,
    UserDataPart,
    build_user_data,
    load_part,
)

__all__ = [
    "MAX_USER_DATA",
    "ContextMethod",
    "ContextSpec",
    "Nic",
    "PartType",
    "UserDataPart",
    "build_configdrive",
    "build_context",
    "build_nocloud",
    "build_opennebula",
    "build_user_data",
    "load_part",
    "network_config_v2",
    "parse_pair",
    "read_seed_iso",
    "validate_cloud_config",
    "validate_user_data",
    "write_context_iso",
    "write_seed_iso",
]
