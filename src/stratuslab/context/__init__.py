"""Contextualization: the data a guest reads at boot (cloud-init NoCloud seeds)."""

from __future__ import annotations

from stratuslab.context.iso import read_seed_iso, write_seed_iso
from stratuslab.context.nocloud import build_nocloud

__all__ = ["build_nocloud", "read_seed_iso", "write_seed_iso"]
