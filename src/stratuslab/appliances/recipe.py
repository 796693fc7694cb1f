"""Appliance recipes: declarative YAML describing a bootable disk image, validated strictly.

A recipe names a ``builder``. ``debootstrap`` (the default) builds a Debian system from the
mirror apt uses; ``tiny`` delegates to :mod:`stratuslab.appliances.tiny`. Unknown keys are errors
that name the key, so a typo never silently builds a different image. The format is documented
in ``docs/contextualization.md`` and by the shipped recipes in ``appliances/recipes/``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stratuslab.errors import InvalidInput, NotFound

RECIPES_DIR = Path(__file__).with_name("recipes")
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")]
PackageName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.+-]+$")]
UserName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
Unit = Annotated[str, Field(pattern=r"^[A-Za-z0-9@._-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(_Strict):
    """``debootstrap --variant=VARIANT --components=... SUITE DIR MIRROR``."""

    suite: str = Field(default="bookworm", pattern=r"^[a-z][a-z0-9-]*$")
    variant: Literal["minbase", "buildd", "-"] = "minbase"
    #: None: the Debian mirror apt on the build host uses for ``suite``.
    mirror: str | None = Field(default=None, pattern=r"^(https?|file)://\S+$")
    components: tuple[Annotated[str, Field(pattern=r"^[a-z-]+$")], ...] = ("main",)


class FileSpec(_Strict):
    """A file written in the image (owned by root)."""

    path: str
    content: str
    mode: str = Field(default="0644", pattern=r"^0?[0-7]{3,4}$")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
            raise ValueError("must be an absolute file path without '..'")
        return value


class UserSpec(_Strict):
    """A local account (``useradd -m``); no passwords: log in with keys from the context."""

    name: UserName
    groups: tuple[UserName, ...] = ()
    shell: str = "/bin/bash"
    uid: int | None = Field(default=None, ge=1000, le=60000)


class CloudInit(_Strict):
    """cloud-init in the image: installed and configured, or disabled."""

    enabled: bool = False
    datasources: tuple[str, ...] = ("NoCloud", "ConfigDrive", "None")
    #: seconds; applies to network datasources a site may add (NoCloud/ConfigDrive are local)
    timeout: int = Field(default=5, ge=1, le=120)
    max_wait: int = Field(default=10, ge=1, le=600)
    #: install the context's SSH keys for root too (the original StratusLab logged in as root)
    root_login: bool = True


class Cleanup(_Strict):
    """The original StratusLab's image rules: nothing host- or instance-specific is shipped."""

    ssh_host_keys: bool = True
    root_authorized_keys: bool = True
    machine_id: bool = True
    logs: bool = True
    apt_lists: bool = True
    cloud_init_state: bool = True


class DebootstrapRecipe(_Strict):
    """A Debian system built with debootstrap, packages from apt, booted by extlinux."""

    name: Name
    version: str = Field(pattern=r"^[0-9A-Za-z.+~-]{1,32}$")
    description: str = ""
    builder: Literal["debootstrap"] = "debootstrap"
    base: Base = Base()
    kernel: PackageName = "linux-image-cloud-amd64"
    kernel_cmdline: str = "console=tty0 console=ttyS0,115200n8"
    packages: tuple[PackageName, ...] = ()
    locale: str | None = Field(default=None, pattern=r"^[A-Za-z_]+\.[A-Za-z0-9-]+$")
    files: tuple[FileSpec, ...] = ()
    users: tuple[UserSpec, ...] = ()
    services: tuple[Unit, ...] = ()
    commands: tuple[str, ...] = ()
    cloud_init: CloudInit = CloudInit()
    cleanup: Cleanup = Cleanup()
    disk_size_mib: int = Field(default=2048, ge=256, le=1024 * 1024)
    compress: bool = True

    def all_packages(self) -> list[str]:
        """The packages to install, with those the other settings need, without duplicates."""
        wanted = [self.kernel, *self.packages]
        if self.cloud_init.enabled:
            wanted.append("cloud-init")
        if self.locale is not None:
            wanted.append("locales")
        return list(dict.fromkeys(wanted))


class TinyRecipe(_Strict):
    """The tiny appliance (busybox + dropbear), built by :mod:`stratuslab.appliances.tiny`."""

    name: Name
    version: str = Field(pattern=r"^[0-9A-Za-z.+~-]{1,32}$")
    description: str = ""
    builder: Literal["tiny"]
    disk_size_mib: int = Field(default=256, ge=64, le=4096)


Recipe = DebootstrapRecipe | TinyRecipe
_MODELS: dict[str, type[DebootstrapRecipe] | type[TinyRecipe]] = {
    "debootstrap": DebootstrapRecipe,
    "tiny": TinyRecipe,
}


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped with StratusLab by name (``tiny``, ``debian-12-base``)."""
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file: an existing path, else the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise NotFound(f"recipe file {path} does not exist", hint="check the path")
        return path
    shipped = shipped_recipes()
    if name_or_path not in shipped:
        raise NotFound(
            f"no shipped recipe named {name_or_path!r}",
            hint=f"use one of {', '.join(shipped)} or the path of a .yaml recipe",
        )
    return shipped[name_or_path]


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NotFound(f"cannot read recipe {path}: {exc.strerror}", hint="check the path") from exc
    return parse_recipe(text, source=str(path))


def parse_recipe(text: str, *, source: str = "recipe") -> Recipe:
    """Validate recipe YAML; every problem is reported with the path of the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"{source} is not valid YAML: {exc}".replace("\n", " "),
            hint="check the indentation at the position given",
        ) from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{source} must be a YAML mapping", hint="start with 'name: ...'")
    builder = data.get("builder", "debootstrap")
    if builder not in _MODELS:
        raise InvalidInput(
            f"{source}: unknown builder {builder!r}", hint=f"use one of {', '.join(_MODELS)}"
        )
    try:
        return _MODELS[builder].model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        raise InvalidInput(
            f"{source}: " + "; ".join(problems),
            hint="see docs/contextualization.md for the recipe format",
            code="invalid_recipe",
            details={"problems": problems},
        ) from None


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of the recipe's canonical JSON (defaults filled in, keys sorted)."""
    doc = recipe.model_dump(mode="json")
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    return f"{where}: {error['msg']}"
