"""StratusLab: an IaaS cloud toolkit for scientific computing centres."""

__version__ = "0.1.0"
