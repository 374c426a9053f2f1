"""The astro-edge node: config, pipeline, detection, scoring, triage, downlink, control.

Kept light on purpose: importing ``edge`` must not pull in sockets, engines or astropy; the
other packages import ``edge.errors`` and ``edge.log`` only.
"""

__version__ = "0.1.0"
