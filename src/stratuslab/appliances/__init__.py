"""Appliances: disk images the toolkit can build itself for tests and demonstrations."""

from __future__ import annotations

from stratuslab.appliances.tiny import READY_MARKER, build_tiny

__all__ = ["READY_MARKER", "build_tiny"]
