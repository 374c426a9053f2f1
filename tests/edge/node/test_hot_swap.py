"""Engine hot swap under load: every frame exactly once, the engine id switching at one frame
boundary, corrupt or foreign engines refused with the reason while the stream goes on, rollback."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge.node.daemon import NodeDaemon
from edge.testing import Ground, LoopbackDaq
from engines.manifest import InputSpec, read_manifest, sha256_file, write_manifest
from engines.testing import write_tiny_engine
from twin import simulate_frame

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _sha(folder: Path) -> str:
    return sha256_file(folder / "manifest.json")


def _bad_engines(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (folder, sha256 to give, reason expected)."""
    out = {"wrong sha256": (good, "0" * 64, "engine_integrity")}
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    model = truncated / "model_fp32.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    out["truncated file"] = (truncated, _sha(truncated), "engine_integrity")
    shape = tmp_path / "shape"
    shutil.copytree(good, shape)
    m = read_manifest(shape)
    write_manifest(dataclasses.replace(m, input=InputSpec(shape=(-1, 2, 16, 16))), shape)
    out["wrong input shape"] = (shape, _sha(shape), "engine_compatibility")
    trt = write_tiny_engine(tmp_path / "trt9", plans={"model_fp16.plan": {
        "precision": "fp16", "tensorrt_version": "9.2.0", "compute_capability": "8.7", "batch_profile": (1, 64, 256),
        "cpu_arch": "aarch64", "os": "Linux", "gpu_name": "Orin", "integrated": True, "cuda_version": "12.6"}})
    data = json.loads((trt / "manifest.json").read_text())
    for rel in ("model_fp32.onnx", "model_int8_qdq.onnx"):
        data["files"].pop(rel)
        (trt / rel).unlink()
    (trt / "manifest.json").write_text(json.dumps(data))
    out["plan for another TensorRT"] = (trt, _sha(trt), "engine_compatibility")
    return out


def _step_until(node: NodeDaemon, done: Any, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < end, node.counters.snapshot()
        node.step()


@pytest.mark.parametrize("worker_max_frames", [20000, 2], ids=["workers-kept", "workers-replaced"])
def test_swap_under_load_switches_at_one_frame_boundary(node_config_factory, small_twin, tmp_path: Path,
                                                        worker_max_frames: int) -> None:
    """While frames stream, bad engines are refused with their reason, a good one runs in shadow and
    agrees, then is swapped in between two frames; every frame is summarised once, the engine id
    changes once, and rollback returns. The same holds when workers are replaced every few frames
    (a replacement started for the old engine is dropped; later ones run the new engine)."""
    ground = Ground(tmp_path / "ground")
    cfg = node_config_factory(node={"workers": 2, "worker_max_frames": worker_max_frames},
                              receive={"queue_policy": "block"}, downlink={"address": ground.address})
    new = write_tiny_engine(tmp_path / "tiny-0.2", version="0.2")
    bad = _bad_engines(tmp_path, new)
    frames = [simulate_frame(small_twin, i % 3, 4) for i in range(12)]
    node = NodeDaemon(cfg)
    node.start()
    old_id = node.engine_id
    answers: dict[str, Any] = {}
    try:
        gates = [threading.Event(), threading.Event()]
        # three batches of 4 frames, the second and third each after its gate opens
        sender = LoopbackDaq(node.receiver_endpoint, frames, gates={4: gates[0], 8: gates[1]})
        c = node.counters
        while c.frames_processed < 4:          # the first batch, on the old engine
            node.step()
        replaced = worker_max_frames < len(frames)
        # every worker that reached worker_max_frames is replaced (the frames need not be shared
        # evenly: a worker busy with a slow frame leaves the next one to the other)
        recycled_all = lambda: all(w.frames_submitted < worker_max_frames for w in node.workers)  # noqa: E731
        if replaced:
            _step_until(node, lambda: c.workers_recycled >= 1 and recycled_all())
            answers["engines_after_first_replacements"] = {w.engine_id for w in node.workers}
        for name, (folder, sha, _) in bad.items():
            answers[name] = node.handle_command("operator", "engine.load", {"path": str(folder), "sha256": sha})
        answers["shadow"] = node.handle_command("operator", "engine.shadow",
                                                {"path": str(new), "sha256": _sha(new), "frames": 2})
        gates[0].set()                          # the second batch runs with the shadow beside
        while not node.status()["shadow"]["done"]:
            node.step()
        answers["shadow_status"] = node.status()["shadow"]
        while c.frames_processed < 8:
            node.step()
        before_swap = c.frames_processed
        answers["good"] = node.handle_command("operator", "engine.load", {"path": str(new), "sha256": _sha(new)})
        gates[1].set()                          # the third batch, on the new engine
        while c.frames_processed < len(frames):
            node.step()
        sender.join(30)
        if replaced:                            # replacements after the swap load the new engine
            _step_until(node, recycled_all)
            answers["engines_after_swap_and_replacements"] = {w.engine_id for w in node.workers}
        answers["rollback"] = node.handle_command("operator", "engine.rollback", {})
        while len(node.spool) > 0:
            node.step()
    finally:
        node.close()
        ground.close()
    for name, (_, _, reason) in bad.items():
        assert not answers[name]["ok"] and answers[name]["reason"] == reason, (name, answers[name])
        assert answers[name]["engine_id"] == old_id
    assert answers["shadow"]["ok"] and answers["shadow"]["shadow"]["engine_id"].startswith("tiny:0.2:")
    shadow = answers["shadow_status"]
    # the same weights under another version: the shadow agrees on every detection of its 2 frames
    assert shadow["done"] and shadow["frames"] == 2 and shadow["agreement"] == 1.0 and shadow["detections"] > 0
    assert answers["good"]["ok"] and answers["good"]["engine_id"].startswith("tiny:0.2:")
    assert answers["rollback"] == {"ok": True, "engine_id": old_id}
    summaries = sorted(ground.summaries(), key=lambda s: s.frame)
    assert [s.frame for s in summaries] == list(range(len(frames)))
    ids = [s.engine_id for s in summaries]
    switch = ids.index(answers["good"]["engine_id"])
    assert switch == before_swap == 8 and set(ids[:switch]) == {old_id} and set(ids[switch:]) == {answers["good"]["engine_id"]}
    by_frame = {s.frame: s.engine_id for s in summaries}
    assert all(r.engine_id == by_frame[r.frame] for r in ground.records())
    assert c.conserved()
    if worker_max_frames < len(frames):
        assert answers["engines_after_first_replacements"] == {old_id}
        assert answers["engines_after_swap_and_replacements"] == {answers["good"]["engine_id"]}


def test_engines_from_outside_the_root_or_that_crash_their_check_are_refused(node_config_factory, tmp_path: Path,
                                                                            tiny_engine: Path) -> None:
    """Only engines inside [engine] root load at run time (a symlink out of it is outside); an
    engine whose check kills the checking process (a native crash) is refused, and the node, which
    ran the check in a child process, goes on with the engine it had."""
    from edge.config import EngineSection
    from edge.errors import EngineIntegrityError
    from edge.node.engine_swap import verify_in_child
    from edge.testing import crashing_verifier
    from engines.testing import write_tiny_engine

    root = tmp_path / "engines"
    inside = write_tiny_engine(root / "tiny-0.3", version="0.3")
    outside = write_tiny_engine(tmp_path / "elsewhere" / "tiny-0.4", version="0.4")
    (root / "link").symlink_to(outside, target_is_directory=True)
    cfg = node_config_factory(engine={"root": str(root)})
    node = NodeDaemon(cfg)
    node.start()
    try:
        before = node.engine_id
        for path in (outside, root / "link"):
            answer = node.handle_command("test", "engine.load", {"path": str(path), "sha256": _sha(path)})
            assert not answer["ok"] and answer["reason"] == "engine_origin", answer
            assert "outside the engine root" in answer["error"] and node.engine_id == before
        answer = node.handle_command("test", "engine.load", {"path": str(inside), "sha256": _sha(inside)})
        assert answer["ok"] and node.engine_id != before
    finally:
        node.close()
    with pytest.raises(EngineIntegrityError, match="crashed the checking process"):
        verify_in_child(str(inside), _sha(inside), EngineSection(), verify=crashing_verifier)


def test_a_node_with_trusted_keys_refuses_an_unsigned_engine_at_start_and_at_run_time(
        node_config_factory, tmp_path: Path) -> None:
    """With [engine] trusted_keys the node starts only on a signed engine, and `engine load` of an
    unsigned one is refused as engine_origin while the node runs on."""
    from edge.errors import EngineOriginError
    from engines.signing import new_signing_key, sign_engine
    from engines.testing import write_tiny_engine

    engine = write_tiny_engine(tmp_path / "engines" / "tiny-signed")
    verify, sign = new_signing_key(tmp_path / "keys", "maker")
    sign_engine(engine, sign)
    unsigned = write_tiny_engine(tmp_path / "engines" / "tiny-unsigned", version="0.5")
    cfg = node_config_factory(engine={"path": str(engine), "trusted_keys": [str(verify)]})
    with NodeDaemon(cfg) as node:
        answer = node.handle_command("test", "engine.load", {"path": str(unsigned), "sha256": _sha(unsigned)})
        assert not answer["ok"] and answer["reason"] == "engine_origin", answer
        assert "no manifest.json.sig" in answer["error"]
    bad = NodeDaemon(node_config_factory(engine={"path": str(unsigned), "trusted_keys": [str(verify)]}))
    with pytest.raises(EngineOriginError, match="no manifest.json.sig"):
        bad.start()
    bad.close()
