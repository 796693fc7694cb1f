"""Simulation: the real controller with many fake-driver agents in one process.

``python -m stratuslab.sim --hosts 2500 --instances 50000 [--database-url URL]`` runs
:func:`stratuslab.sim.run.run` and prints the numbers next to issue 5's targets.
"""
