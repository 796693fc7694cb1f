from __future__ import annotations

import importlib
import pkgutil

import stratuslab.identity as identity


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(identity) if not name.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(identity.__path__)}
    assert set(identity.__all__) == public - modules - {"annotations"}
    assert identity.__all__ == sorted(identity.__all__, key=lambda n: (not n.isupper(), n))


def test_every_module_imports_without_the_web_stack() -> None:
    for module in pkgutil.iter_modules(identity.__path__):
        loaded = importlib.import_module(f"stratuslab.identity.{module.name}")
        assert not any(name.startswith("fastapi") for name in vars(loaded))
