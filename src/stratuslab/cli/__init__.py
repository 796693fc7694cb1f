"""The ``stratus`` command line: one module per noun, talking only to ``stratuslab.client``."""
