"""systemd notify and watchdog, and the node's process figures (CPU load, memory, GPU temperature).

``SystemdNotifier`` speaks the sd_notify datagram protocol to the socket systemd names in
NOTIFY_SOCKET (read once by the command, passed in here): ``READY=1`` when the node runs,
``STATUS=...`` lines, and ``WATCHDOG=1`` pings, which the daemon sends only while the pipeline
makes progress (or has nothing to do), so a stuck pipeline gets the unit restarted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any


class SystemdNotifier:
    """Send sd_notify messages; does nothing when the node was not started by systemd."""

    def __init__(self, notify_socket: str | None, watchdog_usec: str | None = None) -> None:
        self.address = notify_socket or None
        self.watchdog_interval_s: float | None = None
        if watchdog_usec:
            try:
                # ping at half the watchdog period, as sd_watchdog_enabled(3) advises
                self.watchdog_interval_s = int(watchdog_usec) / 2e6
            except ValueError:
                self.watchdog_interval_s = None
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # a full notify queue must never stall the node: such a message is dropped
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False when not under systemd or the socket is gone."""
        if self._sock is None or self.address is None:
            return False
        target = self.address
        if target.startswith("@"):          # abstract namespace socket
            target = "\0" + target[1:]
        try:
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError:   # BlockingIOError included: the receiver's queue is full
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def memory_rss_bytes() -> int | None:
    """This process's resident memory, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cpu_load() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu_temperature_c() -> list[float] | None:
    """GPU temperatures in Celsius from nvidia-smi, or Jetson's thermal zones; None where unreadable."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=temperature.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=2, check=True).stdout
            return [float(v) for v in out.split()]
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
    temps: list[float] = []
    base = "/sys/class/thermal"
    try:
        zones = sorted(os.listdir(base))
    except OSError:
        return None
    for zone in zones:
        try:
            with open(f"{base}/{zone}/type", encoding="ascii") as fh:
                kind = fh.read().strip().lower()
            if "gpu" not in kind:
                continue
            with open(f"{base}/{zone}/temp", encoding="ascii") as fh:
                temps.append(int(fh.read()) / 1000.0)
        except (OSError, ValueError):
            continue
    return temps or None


def process_figures() -> dict[str, Any]:
    """CPU load, resident memory and GPU temperature of this node."""
    return {"cpu_load": cpu_load(), "memory_rss_bytes": memory_rss_bytes(), "gpu_temperature_c": gpu_temperature_c()}
