"""Where a node process's memory creeps: the pipeline, or one of its stages, run in one process.

Builds the node's pipeline as a worker does (shipped engine, default config, the node's mmap
threshold), precomputes each stage's inputs on five 2048x2048 twin frames, then runs one part
--frames times over those frames in turn and prints the resident set every 50 iterations and its
growth after the first 50. Stage inputs are precomputed only for the parts that need them (or
with --hold, which keeps them for ``full`` too, to show how what else the process holds changes
the growth). Parts: ``full`` (Pipeline.process), ``pre`` (calibrate, background,
detect, stamps), ``post`` (inference, scoring, sky positions, triage, records), or one stage:
``calibrate``, ``background``, ``detect``, ``stamps``, ``infer`` (with scoring), ``sky``.
A probe for docs/benchmarks.md ("Soak"), not a speed benchmark.

    .venv/bin/python bench/pipeline_memory.py [--part full] [--frames 600] [--mmap-threshold-kib 4096] [--hold]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PARTS = ("full", "pre", "post", "calibrate", "background", "detect", "stamps", "infer", "sky")


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=PARTS, default="full")
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--mmap-threshold-kib", type=int, default=4096)
    p.add_argument("--hold", action="store_true", help="precompute and hold the stage inputs for --part full too")
    args = p.parse_args()

    from dataclasses import replace

    import numpy as np

    from edge import detect as det
    from edge import sky
    from edge.config import config_from_mapping
    from edge.log import configure
    from edge.node.allocator import fix_mmap_threshold
    from edge.node.assemble import build_pipeline
    from edge.pipeline import FrameInput
    from edge.testing import every_family_twin_config as twin_config
    from edge.triage import triage
    from engines.scoring import score
    from engines.stamps import cut_stamps
    from firmware_bridge.rig import header_fields
    from twin import simulate_frame

    configure(json=True, level="warning", stream=sys.stderr)
    fix_mmap_threshold(args.mmap_threshold_kib * 1024)
    tmp = tempfile.mkdtemp()
    cfg = config_from_mapping({"node": {"id": "probe", "workers": 1},
                               "spool": {"path": str(Path(tmp) / "spool.sqlite")},
                               "log": {"level": "warning"}})
    pipe = build_pipeline(cfg)
    inputs, pre = [], []
    for i in range(5):
        tf = simulate_frame(twin_config(2048), i, 7)
        start, exposure_s, wcs, keywords = header_fields(tf.header, fallback_utc="")
        fi = FrameInput(detector_id="d", series_id="1", seq=i, frame_time=start, exposure_s=exposure_s,
                        pixels=tf.raw_adu, header={**keywords, **wcs})
        inputs.append(fi)
        if args.part == "full" and not args.hold:
            continue
        cal = pipe.calibrator.calibrate(fi.pixels, exposure_s=fi.exposure_s, filter_name=fi.filter_name,
                                        header=fi.header)
        bkg = det.subtract_background(cal.image_e, cal.mask, pipe.detect_settings)
        cands = det.detect(bkg.sub_e, cal.variance_e2, cal.mask, pipe.detect_settings)
        stamps = cut_stamps(bkg.sub_e, cal.variance_e2, cal.mask, cands.x, cands.y)
        pre.append((cal, bkg, cands, stamps))
    classes = pipe.engine.manifest.classes

    def post(fi, cands, stamps):  # type: ignore[no-untyped-def]
        logits, emb = pipe.engine.infer(stamps)
        sc = score(logits, emb, pipe.engine.manifest.scoring)
        labels = tuple(classes[j] for j in sc.label_index.tolist())
        wcs = sky.wcs_from_header(fi.header)
        ra, dec = sky.pixel_to_sky(wcs, cands.x, cands.y)
        new = pipe._new(wcs, ra, dec, cands, labels)
        verdict = triage(pipe.policy, labels=labels, confidence=sc.confidence, epistemic_nats=sc.epistemic,
                         anomaly_pvalue=sc.anomaly_pvalue, new=new, rng=pipe.frame_rng(fi))
        return tuple(pipe._record(fi, int(j), cands, sc, labels, classes, ra, dec, new, verdict, stamps,
                                  "engine", "calibration", "now") for j in np.flatnonzero(verdict.send))

    samples = []
    for i in range(args.frames):
        fi = replace(inputs[i % 5], seq=i)
        cal, bkg, cands, stamps = pre[i % 5] if pre else (None, None, None, None)
        if args.part == "full":
            pipe.process(fi)
        elif args.part in ("pre", "calibrate"):
            cal = pipe.calibrator.calibrate(fi.pixels, exposure_s=fi.exposure_s, filter_name=fi.filter_name,
                                            header=fi.header, out=cal)
            if args.part == "pre":
                b = det.subtract_background(cal.image_e, cal.mask, pipe.detect_settings)
                c = det.detect(b.sub_e, cal.variance_e2, cal.mask, pipe.detect_settings)
                cut_stamps(b.sub_e, cal.variance_e2, cal.mask, c.x, c.y)
        elif args.part == "post":
            post(fi, cands, stamps)
        elif args.part == "background":
            det.subtract_background(cal.image_e, cal.mask, pipe.detect_settings)
        elif args.part == "detect":
            det.detect(bkg.sub_e, cal.variance_e2, cal.mask, pipe.detect_settings)
        elif args.part == "stamps":
            cut_stamps(bkg.sub_e, cal.variance_e2, cal.mask, cands.x, cands.y)
        elif args.part == "infer":
            logits, emb = pipe.engine.infer(stamps)
            score(logits, emb, pipe.engine.manifest.scoring)
        else:
            sky.pixel_to_sky(sky.wcs_from_header(fi.header), cands.x, cands.y)
        if i % 50 == 49:
            samples.append(rss_mb())
    held = " (stage inputs held)" if pre and args.part == "full" else ""
    print(f"part {args.part}{held}, {args.frames} iterations over 5 twin frames 2048x2048, mmap_threshold_kib "
          f"{args.mmap_threshold_kib}; resident set every 50 (MB): " + " ".join(f"{v:.1f}" for v in samples))
    per = (samples[-1] - samples[0]) * 2**20 / 1e3 / max(1, args.frames - 50)
    print(f"growth after the first 50: {samples[-1] - samples[0]:+.2f} MB ({per:.2f} kB an iteration)")


if __name__ == "__main__":
    main()
