"""Find the Debian mirror apt uses, from ``/etc/apt/sources.list`` and ``sources.list.d``.

Both formats are read: one-line (``deb [options] URI SUITE COMPONENTS``) and deb822
(``Types: deb`` / ``URIs:`` / ``Suites:`` stanzas in ``*.sources`` files).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stratuslab.errors import InvalidInput

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` source: a URI and the suites it serves."""

    uri: str
    suites: tuple[str, ...]


def apt_mirror(suite: str, *, apt_dir: Path = APT_DIR) -> str:
    """The URI of the first ``deb`` source serving ``suite`` (e.g. ``bookworm``)."""
    texts = {str(path): path.read_text(errors="replace") for path in _source_files(apt_dir)}
    return find_mirror(texts, suite)


def find_mirror(texts: Mapping[str, str], suite: str) -> str:
    """The first source (in file order) serving ``suite``, without a trailing slash."""
    for name, text in texts.items():
        parse = parse_deb822 if name.endswith(".sources") else parse_one_line
        for source in parse(text):
            if suite in source.suites:
                return source.uri.rstrip("/")
    raise InvalidInput(
        f"no apt source serves the suite {suite!r} (looked in {', '.join(texts) or 'nothing'})",
        hint="set base.mirror in the recipe, or add the suite to /etc/apt/sources.list",
    )


def parse_one_line(text: str) -> Iterator[AptSource]:
    """``deb [opts] URI SUITE [COMPONENT...]`` lines; ``deb-src`` and comments skipped."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "deb":
            yield AptSource(uri=fields[1], suites=(fields[2],))


def parse_deb822(text: str) -> Iterator[AptSource]:
    """deb822 stanzas with ``Types: deb``, not ``Enabled: no``; one source per URI."""
    for stanza in re.split(r"\n\s*\n", text):
        fields = _deb822_fields(stanza)
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        for uri in fields.get("uris", "").split():
            yield AptSource(uri=uri, suites=suites)


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and key:
            fields[key] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            fields[key] = value.strip()
    return fields


def _source_files(apt_dir: Path) -> list[Path]:
    main = apt_dir / "sources.list"
    parts = sorted(
        p for p in (apt_dir / "sources.list.d").glob("*") if p.suffix in (".list", ".sources")
    )
    return [path for path in (main, *parts) if path.is_file()]
