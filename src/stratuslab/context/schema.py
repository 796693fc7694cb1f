"""Validate cloud-config with cloud-init's own JSON schema, before an instance is created.

cloud-init is a Debian package whose modules run under the system Python
(``/usr/bin/python3``), not in our virtual environment, so the check runs a short script in a
subprocess: ``cloudinit.config.schema.validate_cloudconfig_schema`` with the full schema and
``strict=True``. Schema errors and deprecations become one :class:`InvalidInput` listing
``path: message`` for each problem.

When cloud-init is not installed on the controller the YAML is still parsed here (syntax errors
and a non-mapping top level are always reported) and the schema check is skipped with a
logged warning, unless the caller asks for ``require_schema=True``, which makes a missing
cloud-init an error. Sites that want every cloud-config checked install ``cloud-init`` (with
``--no-install-recommends``; it does nothing on a host without systemd or with
``/etc/cloud/cloud-init.disabled``) and set the controller option that passes
``require_schema=True``.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from stratuslab.context.userdata import cloud_config_texts
from stratuslab.errors import DriverError, InvalidInput

log = logging.getLogger(__name__)

#: The interpreter cloud-init's Debian package installs its modules for.
SYSTEM_PYTHON = Path("/usr/bin/python3")
TIMEOUT = 60.0

_SCRIPT = r"""
import json, sys
import yaml
from cloudinit.config.schema import SchemaValidationError, get_schema
from cloudinit.config.schema import validate_cloudconfig_schema
config = yaml.safe_load(sys.stdin.read()) or {}
out = {"errors": [], "deprecations": []}
try:
    validate_cloudconfig_schema(config, get_schema(), strict=True, log_details=False)
except SchemaValidationError as exc:
    out["errors"] = [[p.path, p.message] for p in exc.schema_errors or ()]
    out["deprecations"] = [[p.path, p.message] for p in exc.schema_deprecations or ()]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class SchemaProblem:
    """One problem found by cloud-init: a dotted field path (``users.0``) and a message."""

    path: str
    message: str
    deprecated: bool = False

    def __str__(self) -> str:
        kind = "deprecated: " if self.deprecated else ""
        return f"{self.path or '(top level)'}: {kind}{self.message}"


def validate_cloud_config(
    text: str, *, require_schema: bool = False, python: Path = SYSTEM_PYTHON
) -> None:
    """Raise :class:`InvalidInput` naming every problem of the cloud-config ``text``."""
    config = parse_cloud_config(text)
    if not cloud_init_available(python):
        if require_schema:
            raise DriverError(
                "cloud-init is not installed here, so cloud-config cannot be schema-checked",
                hint="apt-get install --no-install-recommends cloud-init, or turn off the "
                "required schema check",
                code="cloud_init_missing",
            )
        log.warning("cloud-init is not installed: cloud-config schema check skipped")
        return
    del config  # parsed again by cloud-init, from the same text, as the guest will
    problems = schema_problems(text, python=python)
    if problems:
        raise InvalidInput(
            "cloud-config does not match cloud-init's schema: "
            + "; ".join(str(problem) for problem in problems),
            hint="fix the fields named above (see cloud-init's module reference)",
            code="invalid_cloud_config",
            details={"problems": [[p.path, p.message] for p in problems]},
        )


def parse_cloud_config(text: str) -> dict[str, Any]:
    """The cloud-config as a mapping; YAML errors and other top-level types are refused."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"cloud-config is not valid YAML: {exc}".replace("\n", " "),
            hint="check the indentation and quoting at the position given",
            code="invalid_cloud_config",
        ) from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InvalidInput(
            f"cloud-config must be a mapping of module keys, not a {type(config).__name__}",
            hint="start with '#cloud-config' and then keys such as 'runcmd:' or 'write_files:'",
            code="invalid_cloud_config",
        )
    return config


def validate_user_data(
    payload: bytes, *, require_schema: bool = False, python: Path = SYSTEM_PYTHON
) -> None:
    """Validate every cloud-config part of a user-data payload (literal, MIME or gzip)."""
    for text in cloud_config_texts(payload):
        validate_cloud_config(text, require_schema=require_schema, python=python)


def schema_problems(text: str, *, python: Path = SYSTEM_PYTHON) -> list[SchemaProblem]:
    """Run cloud-init's strict schema validation on the cloud-config ``text`` under ``python``."""
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", _SCRIPT],
            input=text,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(
            f"cannot run cloud-init's schema check: {exc}", hint="check the cloud-init package"
        ) from exc
    if done.returncode != 0:
        raise DriverError(
            f"cloud-init's schema check failed: {done.stderr.strip()[-500:]}",
            hint="reinstall cloud-init (apt-get install --reinstall cloud-init)",
        )
    result = json.loads(done.stdout)
    return [SchemaProblem(path, message) for path, message in result["errors"]] + [
        SchemaProblem(path, message, deprecated=True) for path, message in result["deprecations"]
    ]


@cache
def cloud_init_available(python: Path = SYSTEM_PYTHON) -> bool:
    """Whether ``python`` can import cloud-init's schema module (checked once per process)."""
    if not python.exists():
        return False
    done = subprocess.run(
        [str(python), "-I", "-c", "import cloudinit.config.schema"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    return done.returncode == 0
