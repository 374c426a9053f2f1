"""The downlink over real loopback sockets: priority order, byte budgets, acks, retries, a dead ground."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from structlog.testing import capture_logs

from edge.codec import decode_msgpack, read_jsonl
from edge.ground.receiver import GroundReceiver
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.link.wire import ACK, DATA, TAG, encode_ack
from edge.records import DownlinkRecord, compress_stamp, record_id

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_record(frame: int, index: int, priority: float, rng: np.random.Generator) -> DownlinkRecord:
    return DownlinkRecord(
        record_id=record_id("n1", "s1", frame, index), node_id="n1", detector_id="d1", series_id="s1",
        frame=frame, index=index, frame_time="2026-11-28T10:00:00Z", processed_time="2026-11-28T10:00:01Z",
        x=10.0 + index, y=20.0, x_err=0.1, y_err=0.1, ra=None, dec=None, label="streak", confidence=0.95,
        probs={"star": 0.05, "streak": 0.95}, entropy=0.2, aleatoric=0.15, epistemic=0.05,
        anomaly_score=2.0, anomaly_pvalue=0.2, snr=30.0, flux_e=900.0, flux_err_e=30.0, a_px=5.0,
        b_px=1.0, theta_rad=0.3, flags=0, new=False, reasons=("unusual",), priority=priority,
        policy_version=1, engine_id="e1", calibration_id="c1",
        stamp=compress_stamp(rng.normal(size=(2, 16, 16))))


@pytest.fixture
def raw_ground(ctx: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[Any], str]]:
    """A bare ROUTER on a random loopback port that records what arrives and acks only when told."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def receive(sock: zmq.Socket[Any], n: int, timeout_s: float = 5.0) -> list[list[bytes]]:
    """Exactly ``n`` messages (fails on timeout), then checks that nothing more is coming."""
    out: list[list[bytes]] = []
    end = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < end:
        if sock.poll(50):
            out.append(sock.recv_multipart())
    assert len(out) == n, f"got {len(out)} of {n} messages"
    assert not sock.poll(100), "more messages than expected"
    return out


def ids_of(messages: list[list[bytes]]) -> list[str]:
    assert all(m[1:3] == [TAG, DATA] for m in messages)
    return [decode_msgpack(m[3]).id for m in messages]


def wait_connected(dl: Downlink, spool: Spool, timeout_s: float = 5.0) -> None:
    """Pump until the DEALER's connection is up (IMMEDIATE refuses sends before that)."""
    end = time.monotonic() + timeout_s
    while dl.counters().sent == 0 and len(spool) and time.monotonic() < end:
        dl.pump(10)


def deliver(recs: list[DownlinkRecord], spool: Spool, dl: Downlink,
            ground: GroundReceiver) -> tuple[Any, Any]:
    """Spool ``recs``, pump the downlink and the ground until the spool is empty (10 s at most),
    and return both sides' counters."""
    spool.put(recs)
    end = time.monotonic() + 10
    while len(spool) and time.monotonic() < end:
        dl.pump(5)
        ground.poll(5)
    return dl.counters(), ground.counters()


def test_everything_reaches_the_ground_exactly_once_and_leaves_the_spool(
        tmp_path: Path, ctx: zmq.Context[Any], rng: np.random.Generator) -> None:
    """With a live ground every spooled record is stored once, acked, and removed from the spool."""
    recs = [make_record(f, i, float(rng.random()), rng) for f in range(5) for i in range(6)]
    with GroundReceiver("tcp://127.0.0.1:*", tmp_path / "out", context=ctx) as ground, \
            Spool(tmp_path / "s.sqlite") as spool, \
            Downlink(spool, ground.address, context=ctx, budget_bytes_per_s=10_000_000) as dl:
        c, g = deliver(recs, spool, dl, ground)
    stored = read_jsonl(tmp_path / "out" / "downlink.jsonl").messages
    assert sorted(m.id for m in stored) == sorted(r.record_id for r in recs)
    assert set(stored) == set(recs) and g.records == len(recs) and g.duplicates == 0
    assert c.acked == len(recs) and c.in_flight == 0


def test_compressed_downlink_delivers_the_same_records_in_fewer_bytes(
        tmp_path: Path, ctx: zmq.Context[Any], rng: np.random.Generator) -> None:
    """With the shipped dictionary the ground stores exactly the records the spool held, and the
    bytes sent (what the budgets count) are the compressed frames, fewer than the msgpack's."""
    from edge.codec import encode_msgpack
    from edge.link.zdict import compressor

    recs = [make_record(f, i, float(rng.random()), rng) for f in range(3) for i in range(8)]
    with GroundReceiver("tcp://127.0.0.1:*", tmp_path / "out", context=ctx) as ground, \
            Spool(tmp_path / "s.sqlite") as spool, \
            Downlink(spool, ground.address, context=ctx, budget_bytes_per_s=10_000_000,
                     compression="zstd-dict-1") as dl:
        c, g = deliver(recs, spool, dl, ground)
    stored = read_jsonl(tmp_path / "out" / "downlink.jsonl").messages
    assert sorted(m.id for m in stored) == sorted(r.record_id for r in recs) and set(stored) == set(recs)
    assert c.acked == len(recs) and g.malformed == {} and c.retries == 0
    plain = [encode_msgpack(r) for r in recs]
    compress = compressor("zstd-dict-1")
    assert c.sent_bytes == sum(len(compress(p)) for p in plain) < sum(map(len, plain))


def test_sends_follow_priority_order_within_the_per_second_budget(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator) -> None:
    """The highest priorities go first, only as many bytes as the budget allows, the rest after a second."""
    sock, address = raw_ground
    clock = Clock()
    prios = [0.3, 7.0, 1.0, 5.0, 2.0, 6.0]
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put([make_record(0, i, p, rng) for i, p in enumerate(prios)])
        size = len(spool.pending(1)[0].payload)
        with Downlink(spool, address, context=ctx, clock=clock, budget_bytes_per_s=3 * size + size // 2) as dl:
            wait_connected(dl, spool)
            first = receive(sock, 3)
            assert ids_of(first) == ["n1:s1:0:1", "n1:s1:0:5", "n1:s1:0:3"]
            dl.pump(0)
            assert dl.counters().budget_waits >= 1 and dl.counters().sent == 3
            clock.t += 1.0
            dl.pump(0)
            assert ids_of(receive(sock, 3)) == ["n1:s1:0:4", "n1:s1:0:2", "n1:s1:0:0"]
            c = dl.counters()
            assert c.sent == 6 and c.in_flight == 6 and len(spool) == 6  # nothing acked yet


def test_contact_window_caps_the_bytes_until_a_new_window_opens(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator) -> None:
    """No more than the window's bytes leave in one contact window; opening the next lets the rest go."""
    sock, address = raw_ground
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put([make_record(0, i, float(i), rng) for i in range(5)])
        sizes = [len(item.payload) for item in spool.pending(5)]  # in the order they will leave
        with Downlink(spool, address, context=ctx, budget_bytes_per_s=100 * max(sizes),
                      contact_window_bytes=sizes[0] + sizes[1] + 10) as dl:
            with capture_logs() as logs:
                wait_connected(dl, spool)
                receive(sock, 2)
                dl.pump(0)
                dl.pump(0)
            assert dl.counters().window_exhausted >= 2 and dl.counters().sent == 2
            assert [e["event"] for e in logs].count("downlink.window_exhausted") == 1
            assert dl.window_left_bytes is not None and dl.window_left_bytes < sizes[2]
            dl.open_window(0)
            dl.pump(0)
            assert len(receive(sock, 3)) == 3 and dl.counters().sent_bytes == sum(sizes)


def test_unacked_messages_are_sent_again_after_the_ack_timeout(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator) -> None:
    """Without an ack a message is retried after ack_timeout_s, counted and logged; an ack then removes it."""
    sock, address = raw_ground
    clock = Clock()
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put([make_record(0, i, 1.0, rng) for i in range(3)])
        with Downlink(spool, address, context=ctx, clock=clock, ack_timeout_s=2.0) as dl:
            wait_connected(dl, spool)
            first = receive(sock, 3)
            clock.t += 1.0
            dl.pump(0)
            assert not sock.poll(100) and dl.counters().retries == 0
            clock.t += 1.5
            with capture_logs() as logs:
                dl.pump(0)
            again = receive(sock, 3)
            assert ids_of(again) == ids_of(first)
            c = dl.counters()
            assert c.timeouts == 3 and c.retries == 3 and c.sent == 6
            assert [e for e in logs if e["event"] == "downlink.ack_timeout"][0]["count"] == 3
            peer = again[0][0]
            sock.send_multipart([peer, *encode_ack(ids_of(again))])
            sock.send_multipart([peer, *encode_ack(ids_of(again)[:1])])  # a repeated ack
            end = time.monotonic() + 5
            while len(spool) and time.monotonic() < end:
                dl.pump(20)
            dl.pump(100)
            c = dl.counters()
            assert len(spool) == 0 and c.acked == 3 and c.ack_unknown == 1 and c.in_flight == 0


def test_timed_out_records_the_spool_evicted_are_forgotten(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ground that takes records but never acknowledges them (its disk is full), a closed
    contact window, and a full spool that evicts what timed out: the downlink's memory of timed-out
    records must not keep the evicted ones for the life of the node."""
    import edge.link.downlink

    monkeypatch.setattr(edge.link.downlink, "_SWEEP_MIN", 8)  # sweep at 8 ids instead of 4096
    sock, address = raw_ground
    clock = Clock()
    with Spool(tmp_path / "s.sqlite", max_rows=6) as spool:
        old = [make_record(0, i, 1.0, rng) for i in range(6)]
        spool.put(old)
        with Downlink(spool, address, context=ctx, clock=clock, ack_timeout_s=2.0) as dl:
            wait_connected(dl, spool)
            receive(sock, 6)
            dl.open_window(1)  # the contact window closes: nothing more leaves
            clock.t += 3.0
            dl.pump(0)
            assert dl.counters().timeouts == 6
            new = [make_record(1, i, 5.0, rng) for i in range(6)]
            assert len(spool.put(new).evicted) == 6  # the timed-out records make room
            dl.open_window(0)
            dl.pump(0)
            receive(sock, 6)
            dl.open_window(1)
            clock.t += 3.0
            dl.pump(0)
            assert dl.counters().timeouts == 12
            assert dl._timed_out == {r.record_id for r in new}


def test_dead_ground_keeps_records_spooled_until_it_comes_up(
        tmp_path: Path, ctx: zmq.Context[Any], rng: np.random.Generator) -> None:
    """With no ground listening nothing is lost: sends are refused and counted; a ground that starts later gets everything."""
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    address = f"tcp://127.0.0.1:{port}"
    recs = [make_record(0, i, float(i), rng) for i in range(10)]
    with Spool(tmp_path / "s.sqlite") as spool, Downlink(spool, address, context=ctx) as dl:
        spool.put(recs)
        with capture_logs() as logs:
            for _ in range(5):
                dl.pump(10)
        c = dl.counters()
        assert c.sent == 0 and c.send_blocked >= 5 and len(spool) == 10
        blocked = [e for e in logs if e["event"] == "downlink.blocked"]
        assert len(blocked) == 1 and blocked[0]["pending"] == 10  # once, not once per pump
        with GroundReceiver(address, tmp_path / "out", context=ctx) as ground, capture_logs() as logs:
            end = time.monotonic() + 10
            while len(spool) and time.monotonic() < end:
                dl.pump(5)
                ground.poll(5)
            assert ground.counters().records == 10
        assert [e["event"] for e in logs].count("downlink.unblocked") == 1
        assert len(spool) == 0 and spool.counters().acked["record"] == 10


def test_malformed_messages_from_the_ground_are_counted_and_logged(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator) -> None:
    """Junk on the ack channel is counted and logged by reason and removes nothing from the spool."""
    sock, address = raw_ground
    with Spool(tmp_path / "s.sqlite") as spool, Downlink(spool, address, context=ctx) as dl:
        spool.put([make_record(0, 0, 1.0, rng)])
        wait_connected(dl, spool)
        peer = receive(sock, 1)[0][0]
        sock.send_multipart([peer, b"hello"])
        sock.send_multipart([peer, TAG, ACK, b"\xc1"])
        sock.send_multipart([peer, TAG, ACK, msgpack.packb({"ids": 1})])
        with capture_logs() as logs:
            end = time.monotonic() + 5
            while dl.counters().malformed_acks < 3 and time.monotonic() < end:
                dl.pump(20)
        assert dl.counters().malformed_acks == 3 and len(spool) == 1
        events = [e for e in logs if e["event"] == "downlink.ack_malformed"]
        assert len(events) == 3 and {e["reason"] for e in events} == {"record_decode"}


def test_in_flight_messages_are_bounded(tmp_path: Path, ctx: zmq.Context[Any],
                                        raw_ground: tuple[zmq.Socket[Any], str],
                                        rng: np.random.Generator) -> None:
    """No more than max_in_flight messages wait for an ack at once."""
    sock, address = raw_ground
    with Spool(tmp_path / "s.sqlite") as spool, \
            Downlink(spool, address, context=ctx, max_in_flight=4) as dl:
        spool.put([make_record(0, i, 1.0, rng) for i in range(10)])
        wait_connected(dl, spool)
        for _ in range(3):
            dl.pump(10)
        receive(sock, 4)
        assert dl.counters().in_flight == 4 and len(spool.pending(100)) == 6


def test_one_pump_sends_everything_the_budget_allows(tmp_path: Path, ctx: zmq.Context[Any],
                                                     raw_ground: tuple[zmq.Socket[Any], str],
                                                     rng: np.random.Generator) -> None:
    """With room in the budget and the in-flight bound, a single pump sends the whole backlog in priority order."""
    sock, address = raw_ground
    recs = [make_record(1, i, float(rng.random()), rng) for i in range(100)]
    with Spool(tmp_path / "s.sqlite") as spool, \
            Downlink(spool, address, context=ctx, budget_bytes_per_s=10_000_000) as dl:
        spool.put(recs)
        wait_connected(dl, spool)
        assert dl.counters().sent == 100
        got = ids_of(receive(sock, 100))
    assert got == [r.record_id for r in sorted(recs, key=lambda r: -r.priority)]


def test_curve_downlink_delivers_to_a_known_node_and_nothing_from_a_stranger(
        tmp_path: Path, rng: np.random.Generator) -> None:
    """With CURVE on the ground, the listed node's records arrive and are acked; a node with
    another key delivers nothing, and its records stay spooled."""
    from edge.ground.receiver import GroundReceiver
    from edge.link.keys import new_keypair

    keys = tmp_path / "keys"
    ground_pub, ground_sec = new_keypair(keys, "ground")
    node_pub, node_sec = new_keypair(keys, "node")
    _, stranger_sec = new_keypair(keys, "stranger")
    ctx = zmq.Context()
    try:
        with GroundReceiver("tcp://127.0.0.1:0", tmp_path / "g", fits_interval_s=0, context=ctx,
                            curve=(str(ground_sec), [str(node_pub)])) as ground, \
                Spool(tmp_path / "good.sqlite") as good, Spool(tmp_path / "bad.sqlite") as bad:
            good.put([make_record(0, i, float(i), rng) for i in range(3)])
            bad.put([make_record(1, i, float(i), rng) for i in range(3)])
            with Downlink(good, ground.address, context=ctx, curve=(str(node_sec), str(ground_pub))) as ok_link, \
                    Downlink(bad, ground.address, context=ctx, curve=(str(stranger_sec), str(ground_pub))) as bad_link:
                end = time.monotonic() + 10
                while len(good) and time.monotonic() < end:
                    ok_link.pump(10)
                    bad_link.pump(0)
                    ground.poll(10)
                for _ in range(20):
                    bad_link.pump(10)
                    ground.poll(10)
            assert len(good) == 0 and ground.counters().records == 3
            assert len(bad) == 3
    finally:
        ctx.term()


def _round(sock: zmq.Socket[Any], dl: Downlink, clock: Clock, *, ack_all_but: str | None) -> list[str]:
    """Take what arrives (pumping the downlink), ack every id but one (None: ack nothing), let the
    ack timeout pass; returns the ids that arrived."""
    got: list[list[bytes]] = []
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        dl.pump(10)
        while sock.poll(0):
            got.append(sock.recv_multipart())
        if got and not sock.poll(50):
            break
    ids = ids_of(got)
    if ack_all_but is not None and got:
        sock.send_multipart([got[0][0], *encode_ack([i for i in ids if i != ack_all_but])])
        end = time.monotonic() + 2.0
        while dl.counters().acked < dl.counters().sent - dl.counters().retries - 1 and time.monotonic() < end:
            dl.pump(10)
    clock.t += 1.5
    return ids


def test_a_message_the_ground_never_acknowledges_while_it_acknowledges_others_is_dead_lettered(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator) -> None:
    """A poison record (the ground takes every other message, never this one) is sent max_tries
    times, then moved to the spool's dead letters, counted and logged, and never sent again."""
    sock, address = raw_ground
    clock = Clock()
    with Spool(tmp_path / "s.sqlite") as spool:
        poison = make_record(0, 0, 5.0, rng)
        spool.put([poison])
        with Downlink(spool, address, context=ctx, clock=clock, ack_timeout_s=1.0, max_tries=3) as dl:
            wait_connected(dl, spool)
            sends = 0
            with capture_logs() as logs:
                for r in range(1, 7):
                    spool.put([make_record(r, 0, 1.0, rng)])      # the ground keeps acknowledging these
                    sends += poison.record_id in _round(sock, dl, clock, ack_all_but=poison.record_id)
                    dl.pump(0)
            assert spool.dead_letters()[0][:3] == (poison.record_id, "record", 3)
            assert sends == 3, "sent exactly max_tries times, never after it was dead-lettered"
            c, sc = dl.counters(), spool.counters()
            assert c.dead_lettered == 1 and sc.dead_lettered["record"] == 1 and sc.conserved()
            assert len(spool) == 0
            (event,) = [e for e in logs if e["event"] == "downlink.dead_letter"]
            assert event["ids"] == [poison.record_id]


def test_a_silent_ground_makes_no_message_poison(
        tmp_path: Path, ctx: zmq.Context[Any], raw_ground: tuple[zmq.Socket[Any], str],
        rng: np.random.Generator) -> None:
    """A ground that acknowledges nothing (down, stuck) is an outage: messages are retried as long
    as it lasts, and none is dead-lettered however many times it times out."""
    sock, address = raw_ground
    clock = Clock()
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put([make_record(0, i, 1.0, rng) for i in range(3)])
        with Downlink(spool, address, context=ctx, clock=clock, ack_timeout_s=1.0, max_tries=2) as dl:
            wait_connected(dl, spool)
            for _ in range(6):
                _round(sock, dl, clock, ack_all_but=None)
            assert dl.counters().retries >= 10
            assert dl.counters().dead_lettered == 0 and spool.dead_letters() == [] and len(spool) == 3
