"""Watch the JetStream stream the grounds publish to: one line per record, as it arrives.

A pull consumer on ``astro_edge.record.NODE.REASON`` (``*`` where no node or reason is asked
for) takes the records; a durable one (named) remembers where its reader stopped, so a person
who comes back sees each record once; without a name it lives as long as the command. Each line
shows the record id, node, class and confidence, the reasons it was sent, its anomaly p-value
and its epistemic uncertainty, whether the message carries the record's JSON line or its Avro
alert packet. Every message is acknowledged once printed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from edge.ground.publish import STREAM, SUBJECT_ROOT, subject_token


def filter_subject(node: str | None, reason: str | None) -> str:
    """The subject a reader asks for: one node, one reason, or any (``*``)."""
    return (f"{SUBJECT_ROOT}.record.{subject_token(node) if node else '*'}."
            f"{subject_token(reason) if reason else '*'}")


def record_line(payload: bytes, content_type: str | None = None) -> str:
    """One readable line of a published record: its JSON line, or its Avro alert packet when
    ``content_type`` says so."""
    if content_type and content_type.startswith("application/avro"):
        from dataclasses import asdict

        from edge.alerts import decode_packet
        from edge.errors import RecordError

        try:
            r: dict[str, Any] = asdict(decode_packet(payload))
        except RecordError as exc:
            return f"(not an alert packet: {exc})"
    else:
        try:
            r = json.loads(payload)
        except ValueError:
            return f"(not a JSON record: {payload[:60]!r})"
    p = r.get("anomaly_pvalue")
    return (f"{r.get('record_id')}  {r.get('label')} {float(r.get('confidence') or 0):.2f}  "
            f"sent: {','.join(r.get('reasons') or [])}  p={'-' if p is None else f'{p:.3g}'}  "
            f"epistemic={float(r.get('epistemic') or 0):.3f}  frame_time={r.get('frame_time')}")


async def tail(url: str, *, node: str | None = None, reason: str | None = None, durable: str | None = None,
               from_start: bool = False, count: int = 0, timeout_s: float = 0.0,
               out: Callable[[str], None] = print) -> int:
    """Print records from the stream until ``count`` were printed (0: no limit) or ``timeout_s``
    passed without one (0: wait for ever); returns how many were printed."""
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await nats.connect(servers=[url], connect_timeout=5, max_reconnect_attempts=-1)
    printed = 0
    try:
        js = nc.jetstream(timeout=10.0)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW)
        sub = await js.pull_subscribe(filter_subject(node, reason), durable=durable, stream=STREAM, config=config)
        last = time.monotonic()
        while count == 0 or printed < count:
            try:
                batch = await sub.fetch(min(100, count - printed) if count else 100, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):   # nats-py raises either
                batch = []
            for msg in batch:
                out(record_line(msg.data, (msg.headers or {}).get("Content-Type")))
                await msg.ack()
                printed += 1
            if batch:
                last = time.monotonic()
            elif timeout_s and time.monotonic() - last > timeout_s:
                break
    finally:
        await nc.close()
    return printed


def run_tail(url: str, **kwargs: Any) -> int:
    """:func:`tail` from synchronous code."""
    return asyncio.run(tail(url, **kwargs))
