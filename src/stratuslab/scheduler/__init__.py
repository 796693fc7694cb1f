"""Placement as pure functions over a snapshot of hosts."""
