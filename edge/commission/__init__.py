"""Commissioning a node on a real camera: measure the instrument, fit the twin to it, adapt the
engine, build the field's reference catalog, and write a node config with its report.

``astro-edge commission`` (edge/cli/commission.py) drives the modules here in order; ``astro-edge
rig inject`` uses :mod:`edge.commission.inject` to put twin-rendered objects into real frames, so
recall can be measured on real sky. This package sits beside the daemon's shell: it may use the
stages, calibration, the engine (serving and training) and the twin, and the node never imports it.
"""
