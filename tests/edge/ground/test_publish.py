"""Grounds publishing to NATS JetStream: real nats-server processes on loopback ports (the
distribution's package, which ./build.sh test installs), real nodes' downlinks, real grounds.
Each record must be in the stream exactly once: across grounds that stored the same record,
across a nats-server killed and restarted mid-stream, and across a cluster losing a server."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.ground.publish import STREAM, Publisher, subject_of, subject_token
from edge.link.downlink import Downlink
from edge.link.spool import Spool
from edge.records import DownlinkRecord, compress_stamp, record_id
from edge.testing import Ground

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REASONS = ("uncertain", "unusual", "unknown")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server with JetStream, its store in ``store``; a cluster member when given routes."""

    def __init__(self, binary: str, store: Path, *, name: str = "n0", cluster_port: int | None = None,
                 routes: list[int] | None = None) -> None:
        self.binary, self.store, self.name = binary, store, name
        self.port = _free_port()
        self.cluster_port, self.routes = cluster_port, routes or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.store.with_suffix(".conf")
        lines = [f"server_name: {self.name}", f"listen: 127.0.0.1:{self.port}",
                 f'jetstream {{ store_dir: "{self.store}" }}']
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines.append(f"cluster {{ name: astro; listen: 127.0.0.1:{self.cluster_port}; routes: [{routes}] }}")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, f"nats-server {self.name} ended at start"
                assert time.monotonic() < end, f"nats-server {self.name} did not listen within 20 s"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="session")
def nats_binary() -> str:
    binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    assert binary, "these tests start nats-server: ./build.sh test installs it (apt install nats-server)"
    return binary


@pytest.fixture
def nats(nats_binary: str, tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(nats_binary, tmp_path / "nats-store")
    yield server
    server.kill()


def make_record(node: str, frame: int, index: int, rng: np.random.Generator) -> DownlinkRecord:
    return DownlinkRecord(
        record_id=record_id(node, "s1", frame, index), node_id=node, detector_id="d1", series_id="s1",
        frame=frame, index=index, frame_time="2026-12-03T10:00:00Z", processed_time="2026-12-03T10:00:01Z",
        x=10.0 + index, y=20.0, x_err=0.1, y_err=0.1, ra=None, dec=None, label="streak", confidence=0.6,
        probs={"star": 0.4, "streak": 0.6}, entropy=0.7, aleatoric=0.5, epistemic=0.2,
        anomaly_score=2.0, anomaly_pvalue=0.2, snr=30.0, flux_e=900.0, flux_err_e=30.0, a_px=5.0,
        b_px=1.0, theta_rad=0.3, flags=0, new=False, reasons=(REASONS[index % 3],), priority=1.0,
        policy_version=1, engine_id="e1", calibration_id="c1",
        stamp=compress_stamp(rng.normal(size=(2, 16, 16))))


def node_spool(path: Path, node: str, n: int, seed: int = 0) -> tuple[Spool, list[str]]:
    """A node's spool holding ``n`` records (the same ones for the same ``seed``)."""
    spool = Spool(path)
    rng = np.random.default_rng(seed)
    records = [make_record(node, i // 10, i % 10, rng) for i in range(n)]
    for start in range(0, n, 50):
        spool.put(records[start:start + 50])
    return spool, [r.record_id for r in records]


def downlink_all(spools: list[Spool], addresses: list[str], timeout_s: float = 120.0) -> None:
    """Each spool's records down to its ground, until every spool is empty."""
    links = [Downlink(s, a, budget_bytes_per_s=50_000_000, ack_timeout_s=2.0) for s, a in zip(spools, addresses, strict=True)]
    try:
        end = time.monotonic() + timeout_s
        while any(len(s) for s in spools):
            assert time.monotonic() < end, f"spools not emptied: {[len(s) for s in spools]}"
            for link in links:
                link.pump(5)
    finally:
        for link in links:
            link.close()


def stream_contents(url: str) -> tuple[int, list[str], list[str]]:
    """The stream's message count, and every message's Nats-Msg-Id and subject, read back
    through a pull consumer."""
    count, ids, subjects, _ = stream_read(url)
    return count, ids, subjects


def stream_read(url: str) -> tuple[int, list[str], list[str], Any]:
    """:func:`stream_contents` and the stream's info (config, cluster)."""
    import nats

    async def read() -> tuple[int, list[str], list[str], Any]:
        nc = await nats.connect(servers=[url], connect_timeout=5)
        try:
            js = nc.jetstream(timeout=10.0)
            end = time.monotonic() + 60
            while True:   # a cluster that just lost a server may still be electing its meta leader
                try:
                    info = await js.stream_info(STREAM)
                    sub = await js.pull_subscribe("astro_edge.>", durable=None, stream=STREAM)
                    break
                except nats.errors.TimeoutError:
                    assert time.monotonic() < end, "the stream's info and a consumer did not come within 60 s"
            ids: list[str] = []
            subjects: list[str] = []
            while len(ids) < info.state.messages:
                for msg in await sub.fetch(500, timeout=10):
                    ids.append(msg.headers["Nats-Msg-Id"])
                    subjects.append(msg.subject)
                    await msg.ack()
            return info.state.messages, ids, subjects, info
        finally:
            await nc.close()

    return asyncio.run(read())


def wait_published(publishers: list[Publisher], timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while any(p.lag_bytes() for p in publishers):
        assert time.monotonic() < end, f"still to publish: {[p.lag_bytes() for p in publishers]} bytes"
        time.sleep(0.1)


def test_the_fields_of_a_stored_line_are_read_as_json_reads_them(tmp_path: Path) -> None:
    """The publisher reads a line's id, node and reasons without parsing its stamp; a value
    that contains the text of a key cannot fool it, and every real line reads as json.loads does."""
    import json

    from edge.codec import to_json_line
    from edge.ground.publish import line_fields

    record = make_record('n"1,"record_id":"x', 0, 1, np.random.default_rng(0))
    line = to_json_line(record, received_time="2026-12-03T10:00:02Z")
    data = json.loads(line)
    assert line_fields("record", line) == {k: data[k] for k in ("record_id", "node_id", "reasons")}
    with pytest.raises(KeyError):
        line_fields("record", '{"node_id":"n1","note":"\\"record_id\\":\\"x\\""}')


def test_subjects_are_per_node_and_reason_and_safe() -> None:
    """A node id with dots or wildcards cannot split or widen a subject."""
    assert subject_token("cam.1 *>") == "cam_1___"
    assert subject_of("record", {"node_id": "n.1", "reasons": ["unknown", "unusual"]}) == "astro_edge.record.n_1.unknown"
    assert subject_of("frame_summary", {"node_id": "n1"}) == "astro_edge.frame.n1"


def test_four_nodes_two_grounds_every_record_once_in_the_stream(nats: NatsServer, tmp_path: Path) -> None:
    """Four nodes downlink 500 records each, two to each ground; node 0's records also reach the
    second ground (its ack was lost and it sent them there). Both grounds publish what they
    stored: the stream holds each of the 2000 records exactly once, on its node's and reason's
    subject, and the second ground's copies of node 0's records were acknowledged as duplicates."""
    spools, ids = [], []
    for n in range(4):
        spool, node_ids = node_spool(tmp_path / f"node{n}.sqlite", f"node{n}", 500)
        spools.append(spool)
        ids += node_ids
    again, again_ids = node_spool(tmp_path / "node0-again.sqlite", "node0", 500)   # the same records
    assert again_ids == ids[:500]
    with Ground(tmp_path / "a") as ground_a, Ground(tmp_path / "b") as ground_b:
        publishers = [Publisher(ground_a.out_dir, nats.url), Publisher(ground_b.out_dir, nats.url)]
        for p in publishers:
            p.start()
        try:
            downlink_all(spools, [ground_a.address, ground_a.address, ground_b.address, ground_b.address])
            wait_published(publishers)
            downlink_all([again], [ground_b.address])
            wait_published(publishers)
        finally:
            counters = [p.stop() for p in publishers]
    count, got, subjects = stream_contents(nats.url)
    assert count == len(got) == 2000 and sorted(got) == sorted(ids)
    assert counters[0].published + counters[1].published == 2000
    assert counters[1].duplicates == 500 and counters[0].failures == counters[1].failures == 0
    assert {s.split(".")[2] for s in subjects} == {"node0", "node1", "node2", "node3"}
    assert {s.split(".")[3] for s in subjects} == set(REASONS)


def test_nats_server_killed_mid_stream_and_restarted_loses_and_doubles_nothing(nats: NatsServer, tmp_path: Path) -> None:
    """The server is killed (SIGKILL) while a ground publishes and restarted on its store: the
    publisher reconnects and resumes at its cursor; the stream holds each record exactly once."""
    spool, ids = node_spool(tmp_path / "node.sqlite", "node0", 2000)
    with Ground(tmp_path / "g") as ground:
        publisher = Publisher(ground.out_dir, nats.url)
        publisher.start()
        # the records come down while the ground publishes: waiting for the whole downlink first
        # let a fast publisher finish before the kill
        down = threading.Thread(target=downlink_all, args=([spool], [ground.address]))
        down.start()
        try:
            end = time.monotonic() + 60
            while publisher.counters.published < 300:
                assert time.monotonic() < end, "nothing published"
                time.sleep(0.005)
            nats.kill()
            killed_at = publisher.counters.published
            time.sleep(1.0)
            nats.start()
            down.join(180)
            wait_published([publisher])
        finally:
            down.join(180)
            counters = publisher.stop()
    count, got, _ = stream_contents(nats.url)
    assert 0 < killed_at < 2000
    assert count == len(got) == 2000 and sorted(got) == sorted(ids)
    assert counters.published + counters.duplicates >= 2000


def test_a_three_server_cluster_with_three_replicas_keeps_accepting_when_one_server_dies(
        nats_binary: str, tmp_path: Path) -> None:
    """Three servers, a stream with replicas = 3: one server is killed halfway; the ground goes
    on publishing through the other two, and every record is in the stream once."""
    cluster_ports = [_free_port() for _ in range(3)]
    servers = [NatsServer(nats_binary, tmp_path / f"store{i}", name=f"n{i}", cluster_port=cluster_ports[i],
                          routes=[p for j, p in enumerate(cluster_ports) if j != i]) for i in range(3)]
    first, first_ids = node_spool(tmp_path / "first.sqlite", "node0", 500)
    second, second_ids = node_spool(tmp_path / "second.sqlite", "node1", 500)
    try:
        with Ground(tmp_path / "g") as ground:
            publisher = Publisher(ground.out_dir, servers[0].url, replicas=3)
            publisher.start()
            try:
                downlink_all([first], [ground.address])
                wait_published([publisher], timeout_s=180)
                servers[2].kill()
                downlink_all([second], [ground.address])
                wait_published([publisher], timeout_s=180)
            finally:
                counters = publisher.stop()
        count, got, _, info = stream_read(servers[1].url)
    finally:
        for s in servers:
            s.kill()
    assert info.config.num_replicas == 3 and info.cluster is not None
    assert len(info.cluster.replicas or []) + 1 == 3, "the leader and two replicas, one of them now offline"
    assert count == len(got) == 1000 and sorted(got) == sorted(first_ids + second_ids)
    assert counters.published == 1000


def test_astro_edge_ground_publish_stores_acknowledges_and_publishes(nats: NatsServer, tmp_path: Path) -> None:
    """`astro-edge ground --publish` as an operator runs it: a node's 200 records are stored,
    acknowledged and in the stream once; SIGTERM stops it with exit code 0 and a published count."""
    import sys

    port = _free_port()
    ground = subprocess.Popen([sys.executable, "-m", "edge.cli", "ground", "--bind", f"tcp://127.0.0.1:{port}",
                               "--out", str(tmp_path / "g"), "--publish", nats.url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        spool, ids = node_spool(tmp_path / "node.sqlite", "node0", 200)
        downlink_all([spool], [f"tcp://127.0.0.1:{port}"])
        end = time.monotonic() + 60
        while stream_contents(nats.url)[0] < 200:
            assert time.monotonic() < end, "the stream did not reach 200 messages"
            time.sleep(0.2)
        ground.send_signal(signal.SIGTERM)
        out, _ = ground.communicate(timeout=60)
    finally:
        if ground.poll() is None:
            ground.kill()
            ground.wait(10)
    assert ground.returncode == 0, out
    assert "published 200 to " in out and "0 bytes left" in out
    count, got, _ = stream_contents(nats.url)
    assert count == 200 and sorted(got) == sorted(ids)


def test_alerts_tail_shows_one_reason_of_one_node_and_a_durable_reader_sees_each_record_once(
        nats: NatsServer, tmp_path: Path) -> None:
    """`astro-edge alerts tail` filtered by node and reason prints exactly those records, one
    line each; a durable reader that comes back sees nothing twice."""
    import sys

    spools = [node_spool(tmp_path / f"node{n}.sqlite", f"node{n}", 90)[0] for n in range(2)]
    with Ground(tmp_path / "g") as ground:
        publisher = Publisher(ground.out_dir, nats.url)
        publisher.start()
        try:
            downlink_all(spools, [ground.address, ground.address])
            wait_published([publisher])
        finally:
            publisher.stop()
        wanted = sorted(r.record_id for r in ground.records() if r.node_id == "node1" and r.reasons[0] == "unusual")

    def tail(*extra: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "edge.cli", "alerts", "tail", nats.url, "--node", "node1",
                               "--reason", "unusual", "--from-start", "--timeout-s", "3", *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]

    assert len(wanted) == 27 and sorted(tail()) == wanted
    assert sorted(tail("--durable", "desk")) == wanted
    assert tail("--durable", "desk") == [], "a durable reader sees each record once"


def test_a_ground_can_publish_avro_alert_packets_that_read_back_as_its_records(nats: NatsServer, tmp_path: Path) -> None:
    """With packets="avro" each record's message is its Avro alert packet (Content-Type says
    so), which decodes with the shipped schema to exactly the record the ground stored; frame
    summaries stay JSON; `alerts tail` reads both kinds of message."""
    import sys

    import nats as nats_py

    from edge.alerts import PACKET_CONTENT_TYPE, decode_packet

    spool, ids = node_spool(tmp_path / "node.sqlite", "node0", 30)
    with Ground(tmp_path / "g") as ground:
        publisher = Publisher(ground.out_dir, nats.url, packets="avro")
        publisher.start()
        try:
            downlink_all([spool], [ground.address])
            wait_published([publisher])
        finally:
            counters = publisher.stop()
        stored = {r.record_id: r for r in ground.records()}

    async def read() -> list[Any]:
        nc = await nats_py.connect(servers=[nats.url])
        try:
            sub = await nc.jetstream().pull_subscribe("astro_edge.record.>", stream=STREAM)
            return list(await sub.fetch(30, timeout=10))
        finally:
            await nc.close()

    messages = asyncio.run(read())
    assert counters.published == 30 and counters.unreadable == 0
    assert {m.headers["Content-Type"] for m in messages} == {PACKET_CONTENT_TYPE}
    records = [decode_packet(m.data) for m in messages]
    assert sorted(r.record_id for r in records) == sorted(ids)
    assert all(r == stored[r.record_id] for r in records)
    done = subprocess.run([sys.executable, "-m", "edge.cli", "alerts", "tail", nats.url, "--from-start",
                           "--timeout-s", "3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split()[0] for line in done.stdout.splitlines()) == sorted(ids)
