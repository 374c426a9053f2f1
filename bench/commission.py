"""Commission a node on part of a real frame set, then measure it on the rest and on injections.

    .venv/bin/python bench/commission.py DATA_DIR [--commission 0,1,3,4,6,7] [--out DIR]
                                         [--seeds 5] [--per-frame 40] [--reuse]

DATA_DIR holds bias/, flat/ (optional dark/) and science/ folders of FITS frames of one camera
(../shared/data/real/lowell-nasa42 is the example; its license keeps it outside the repository).
The science frames are taken in name order; ``--commission`` picks those commissioning sees (any
6 of Lowell's 8), the others are the measurement frames. The run:

1. ``astro-edge commission`` on the bias, flat and commissioning frames (timed; ``--reuse`` keeps
   an earlier run's DIR/commissioned);
2. ``astro-edge process --config DIR/commissioned/node.toml`` on the measurement frames: the
   fraction of real detections sent down (audit included) and the fraction flagged at alpha = 0.01;
3. ``astro-edge rig inject`` into the measurement frames (``--seeds`` injections of ``--per-frame``
   objects of every family), then ``process`` and ``rig score``: recall per family at S/N >= 20.
   The injected control stars are put into a copy of the reference catalog (they are known stars
   of the field; an uncatalogued point source is a transient, and "new" is right to send it), so
   their sent fraction measures what the engine and triage send of ordinary stars.

The fitted twin's distances come from the commissioning report (commissioning.json). The last line
is the sent fraction against the bar (<= 3 %) with the commissioning time.

``--tradeoff`` then runs every frame again with the audit at 1 (each detection leaves a record
that says which reasons applied) and prints, for a range of ``unusual_confidence_min``, the share
of real detections sent against the recall of each family: what the engine can trade on this
camera, whatever threshold commissioning chose.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

EXE = [sys.executable, "-m", "edge.cli", "-q", "--log-level", "warning"]
FAMILIES = ("lens_arc", "comet", "lobster_psf", "ghost", "close_double", "transient", "streak", "star")
#: unusual_confidence_min values of the --tradeoff table (the commissioned one is added)
TRADEOFF = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def run(args: list[str]) -> str:
    out = subprocess.run(EXE + args, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"astro-edge {args[0]} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def frames_of(summary_path: Path) -> list[dict]:
    return [json.loads(line) for line in summary_path.read_text().splitlines() if line.strip()]


def catalog_with_controls(config: Path, truth_path: Path, frames_dir: Path, out: Path, tag: str = "") -> Path:
    """A copy of the node config whose catalog also holds the injected control stars."""
    from astropy.table import Table, vstack

    from calibration import Calibrator
    from edge import detect
    from edge.config import load_config
    from edge.node.process import read_frame
    from edge.sky import ReferenceCatalog, register_offset

    cfg = load_config(config)
    ref = Table.read(cfg.catalog.reference)
    cat = ReferenceCatalog.load(cfg.catalog.reference)
    truth = Table.read(truth_path)
    cal = Calibrator.from_bundle(cfg.calibration.bundle) if cfg.calibration.bundle else Calibrator.without_bundle()
    rows = []
    for i, path in enumerate(sorted(frames_dir.glob("*_inj.fits"))):
        fr = read_frame(path, i)
        c = cal.calibrate(fr.pixels, exposure_s=fr.exposure_s, filter_name=fr.filter_name, header=fr.header)
        b = detect.subtract_background(c.image_e, c.mask, cfg.detect)
        cands = detect.detect(b.sub_e, c.variance_e2, c.mask, cfg.detect)
        reg = register_offset(cands.x, cands.y, cands.flux_e, cat.x_px, cat.y_px)
        dx, dy = (reg.dx_px, reg.dy_px) if reg is not None else (0.0, 0.0)
        stars = truth[(truth["family"] == "star") & (truth["frame"] == i)]
        rows.append(Table({"x_px": np.asarray(stars["x"]) + dx, "y_px": np.asarray(stars["y"]) + dy}))
    extra = vstack(rows) if rows else Table({"x_px": [], "y_px": []})
    for name in ref.colnames:
        if name not in extra.colnames:
            extra[name] = np.full(len(extra), np.nan) if ref[name].dtype.kind == "f" else np.zeros(len(extra), ref[name].dtype)
    merged = vstack([ref, extra[ref.colnames]])
    merged.meta = ref.meta
    cat_path = out / f"reference_with_controls{tag}.ecsv"
    merged.write(cat_path, format="ascii.ecsv", overwrite=True)
    text = config.read_text().replace(f'reference = "{cfg.catalog.reference}"', f'reference = "{cat_path}"')
    path = out / f"node_controls{tag}.toml"
    path.write_text(text)
    return path


def count_hits(hits: dict[str, list[int]], score: dict) -> None:
    """Add one `rig score` result's sent and injected counts of each family to ``hits``."""
    for fam in FAMILIES:
        src = score["recall_by_family"].get(fam) or score["recall_by_label"].get(fam)
        if src:
            hits[fam][0] += src["n_sent"]
            hits[fam][1] += src["n_truth"]


def audit_all(config: Path, out: Path) -> Path:
    """A copy of a node config that leaves a record of every detection (audit 1, no cap)."""
    text = config.read_text().replace("alpha = 0.01", "alpha = 0.01\naudit_rate = 1.0\nmax_records_per_frame = 1000000", 1)
    path = out / f"{config.stem}_all.toml"
    path.write_text(text)
    return path


def sent_at(records: list[dict], classes_of_interest: tuple[str, ...], threshold: float) -> list[dict]:
    """The records the node would send with unusual_confidence_min = threshold (audit left out)."""
    out = []
    for r in records:
        others = set(r["reasons"]) - {"unusual", "audit"}
        if others or (r["label"] in classes_of_interest and r["confidence"] >= threshold):
            out.append(r)
    return out


def tradeoff(config: Path, measuring: list[Path], injected: list[tuple[Path, Path]], out: Path) -> None:
    """Print the share of real detections sent and each family's recall for every TRADEOFF threshold."""
    from astropy.table import Table

    from edge.config import load_config
    from firmware_bridge.rig import match_and_score, read_downlink

    cfg = load_config(config)
    coi = tuple(cfg.triage.classes_of_interest)
    real_dir = out / "all_real"
    shutil.rmtree(real_dir, ignore_errors=True)
    run(["process", "--config", str(audit_all(config, out)), "--out", str(real_dir), *map(str, measuring)])
    real = read_downlink(real_dir / "downlink.jsonl")
    sets = []
    for inj, controls in injected:
        d = out / f"all_{inj.name}"
        shutil.rmtree(d, ignore_errors=True)
        run(["process", "--config", str(audit_all(controls, out)), "--out", str(d), *map(str, sorted(inj.glob("*_inj.fits")))])
        sets.append((Table.read(inj / "truth.ecsv"), read_downlink(d / "downlink.jsonl")))
    print(f"trade-off on {len(real)} real detections and {len(sets)} injection sets (S/N >= 20):")
    print("  unusual_confidence_min  real sent  " + "  ".join(f"{f:>11s}" for f in FAMILIES))
    for t in sorted(set(TRADEOFF) | {cfg.triage.unusual_confidence_min}, reverse=True):
        hits = {f: [0, 0] for f in FAMILIES}
        for truth, records in sets:
            score = match_and_score(np.asarray(truth["frame"]), np.asarray(truth["x"]), np.asarray(truth["y"]),
                                    list(truth["label"]), [str(f) for f in truth["family"]],
                                    sent_at(records, coi, t), radius_px=3.0,
                                    truth_size_px=np.asarray(truth["size_px"]),
                                    truth_series=list(truth["series_id"]),
                                    truth_snr=np.asarray(truth["snr_expected"]), snr_min=20.0)
            count_hits(hits, score)
        mark = " (commissioned)" if t == cfg.triage.unusual_confidence_min else ""
        share = len(sent_at(real, coi, t)) / max(len(real), 1)
        print(f"  {t:22.3f}  {share:9.2%}  " + "  ".join(f"{k / max(n, 1):11.3f}" for k, n in hits.values()) + mark)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, metavar="DATA_DIR")
    ap.add_argument("--commission", default="0,1,3,4,6,7", help="indices of the commissioning frames")
    ap.add_argument("--out", type=Path, default=Path("/tmp/astro-edge-commission"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--per-frame", type=int, default=40)
    ap.add_argument("--reuse", action="store_true", help="keep OUT/commissioned from an earlier run")
    ap.add_argument("--tradeoff", action="store_true",
                    help="also print the real sent share against each family's recall for a range of unusual thresholds")
    a = ap.parse_args()
    science = sorted((a.data / "science").glob("*.fit*"))
    pick = [int(i) for i in a.commission.split(",")]
    commissioning = [science[i] for i in pick]
    measuring = [p for i, p in enumerate(science) if i not in pick]
    done = a.out / "commissioned"
    a.out.mkdir(parents=True, exist_ok=True)
    seconds = None
    if not (a.reuse and (done / "node.toml").exists()):
        shutil.rmtree(done, ignore_errors=True)
        args = ["commission", "--science", *map(str, commissioning), "--out", str(done)]
        for kind in ("bias", "dark", "flat"):
            files = sorted((a.data / kind).glob("*.fit*")) if (a.data / kind).is_dir() else []
            if files:
                args += [f"--{kind}", *map(str, files)]
        t0 = time.perf_counter()
        run(args)
        seconds = time.perf_counter() - t0
    config = done / "node.toml"
    report = json.loads((done / "commissioning.json").read_text())
    print(f"commissioned on {[p.name for p in commissioning]}; measured on {[p.name for p in measuring]}")
    if seconds is not None:
        print(f"commissioning took {seconds:.0f} s ({seconds / 60:.1f} min)")

    # real detections of the measurement frames
    plain = a.out / "plain"
    shutil.rmtree(plain, ignore_errors=True)
    run(["process", "--config", str(config), "--out", str(plain), *map(str, measuring)])
    frames = frames_of(plain / "frames.jsonl")
    det = sum(f["detections"] for f in frames)
    sent = sum(f["sent"] for f in frames)
    unknown = sum(f["sent_by_reason"]["unknown"] for f in frames)
    reasons = {r: sum(f["sent_by_reason"][r] for f in frames) for r in frames[0]["sent_by_reason"]}
    print(f"real detections: {det}; sent {sent} ({sent / det:.2%}; bar <= 3 %); by reason {reasons}")
    print(f"flagged at alpha = 0.01 (unknown): {unknown / det:.2%} (bar 0.5-2 %)")

    # injections
    hits: dict[str, list[int]] = {f: [0, 0] for f in FAMILIES}
    injected: list[tuple[Path, Path]] = []
    for seed in range(1, a.seeds + 1):
        inj, proc = a.out / f"inj{seed}", a.out / f"proc{seed}"
        for d in (inj, proc):
            shutil.rmtree(d, ignore_errors=True)
        cal_args = []
        cfg_text = config.read_text()
        if "[calibration]" in cfg_text:
            cal_args = ["--calibration", str(done / "calibration.fits")]
        run(["rig", "inject", *map(str, measuring), "--families", "all", "--per-frame", str(a.per_frame),
             "--seed", str(seed), "--out", str(inj), *cal_args])
        controls = catalog_with_controls(config, inj / "truth.ecsv", inj, a.out, tag=str(seed))
        injected.append((inj, controls))
        run(["process", "--config", str(controls), "--out", str(proc), *map(str, sorted(inj.glob("*_inj.fits")))])
        score = json.loads(run(["rig", "score", "--truth", str(inj / "truth.ecsv"), "--downlink",
                                str(proc / "downlink.jsonl"), "--snr-min", "20"]))
        count_hits(hits, score)
    print("injected at S/N >= 20 (recall = sent / injected; for control stars lower is better):")
    for fam, (k, n) in hits.items():
        bar = {"star": "<= 0.03", "close_double": "(blend, no bar)", "streak": "(no bar)"}.get(fam, ">= 0.9")
        print(f"  {fam:13s} {k:4d} / {n:4d} = {k / max(n, 1):.3f}   bar {bar}")
    twin = report.get("twin") or {}
    dist = twin.get("distances") or {}
    if dist:
        print(f"fitted twin: FWHM {dist['fwhm_px']['distance']:+.1%}, sky noise {dist['sky_noise_e']['distance']:+.1%}, "
              f"counts per flux bin: median |d| {dist['counts_median_distance']:.1%}, largest {dist['counts_max_distance']:.1%} "
              "(bar: each within 10 %)")
    took = f"; commissioning {seconds / 60:.1f} min (bar < 20)" if seconds is not None else ""
    print(f"sent {sent / det:.2%} of real detections (bar <= 3 %); unknown {unknown / det:.2%}{took}")
    if a.tradeoff:
        tradeoff(config, measuring, injected, a.out)


if __name__ == "__main__":
    main()
