"""What each operator command does to the running node.

The control channel (:mod:`edge.node.control`) brings requests in and carries the answers back;
this module carries them out: ``status``, ``set`` (triage settings, the policy version bumped by
the node), ``pause`` / ``resume``, ``flush`` (a new contact window), ``engine.load``,
``engine.shadow``, ``engine.rollback`` and ``shutdown``. Every command is logged with who sent
it; every answer is a JSON-ready dict with ``ok`` true or false. It owns no socket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.config import build_section
from edge.log import get_logger
from edge.node.engine_swap import EngineSwap
from edge.node.forward import Forwarder
from edge.node.pool import WorkerPool
from edge.triage import TriagePolicy

log = get_logger(__name__)


@dataclass
class OperatorState:
    """What operators switch while the node runs: the triage policy, pause, and the request to stop."""

    policy: TriagePolicy
    paused: bool = False
    shutdown_requested: bool = False


class Commands:
    """Carries out operator commands on the node's parts."""

    def __init__(self, state: OperatorState, *, pool: WorkerPool, engines: EngineSwap,
                 forwarder: Forwarder, status: Callable[[], dict[str, Any]]) -> None:
        self.state = state
        self.pool = pool
        self.engines = engines
        self.forwarder = forwarder
        self._status = status

    def handle(self, user: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out one operator command; the answer says what changed or what was wrong."""
        log.info("control.command", user=user, command=command, args=args)
        if command == "status":
            return {"ok": True, "status": self._status()}
        if command == "set":
            return self._set_policy(user, args)
        if command in ("pause", "resume"):
            self.state.paused = command == "pause"
            log.warning(f"node.{command}d", user=user)
            return {"ok": True, "paused": self.state.paused}
        if command == "flush":
            self.forwarder.open_window()
            return {"ok": True, "flush": "a new contact window is open"}
        if command == "engine.load":
            return self.engines.load(user, args)
        if command == "engine.shadow":
            return self.engines.start_shadow(user, args)
        if command == "engine.rollback":
            return self.engines.rollback(user)
        if command == "shutdown":
            self.state.shutdown_requested = True
            log.warning("node.shutdown_requested", user=user)
            return {"ok": True, "shutdown": "after the accepted frames are spooled"}
        from edge.node.control import COMMANDS

        return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(COMMANDS)}"}

    def _set_policy(self, user: str, changes: dict[str, Any]) -> dict[str, Any]:
        if "version" in changes or not changes:
            return {"ok": False, "error": "give one or more triage settings; the version is bumped by the node"}
        problems: list[str] = []
        policy = self.state.policy
        merged = {**{f.name: getattr(policy, f.name) for f in dataclasses.fields(TriagePolicy)},
                  **changes, "version": policy.version + 1}
        merged["classes_of_interest"] = list(merged["classes_of_interest"])
        new = build_section(TriagePolicy, merged, "triage", problems)
        if problems:
            return {"ok": False, "error": "; ".join(problems)}
        old, self.state.policy = policy, new
        self.pool.set_policy(new)
        changed = {k: [getattr(old, k), getattr(new, k)] for k in changes}
        log.warning("policy.changed", user=user, version=new.version, changed=changed)
        return {"ok": True, "policy_version": new.version, "changed": changed}
