"""DIR/report.md and its PNG figures: what commissioning measured, fitted, adapted and chose.

matplotlib (the ``train`` extra, with torch) draws the figures with its file-only Agg backend;
everything the report states comes from the :class:`edge.commission.run.Commissioning` it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.commission import measure
from edge.commission.calib import summary as calib_summary
from edge.commission.run import Commissioning


def write_report(c: Commissioning, out: Path) -> Path:
    """Write report.md, figures/*.png and commissioning.json into ``out``; return the report's path."""
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    drawn = _figures(c, figures)
    data = as_dict(c)
    (out / "commissioning.json").write_text(json.dumps(data, indent=2, default=_plain) + "\n", encoding="utf-8")
    lines = ["# Commissioning report", ""]
    lines += [f"Science frames: {len(c.frames)} ({', '.join(Path(p).name for p in c.settings.science)}); "
              f"measured: {len(c.measured)}; node config: `node.toml`.", ""]
    if c.notes:
        lines += ["## What could not be done", ""] + [f"- {n}" for n in c.notes] + [""]
    lines += _calibration(c) + _measurements(c) + _wcs_and_catalog(c) + _twin(c, drawn) + _engine(c)
    lines += ["## Time", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in c.seconds.items()] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def as_dict(c: Commissioning) -> dict[str, Any]:
    """Every figure of the report, as plain data (commissioning.json)."""
    return {
        "science": [str(p) for p in c.settings.science],
        "calibration": calib_summary(c.bundle) if c.bundle is not None else None,
        "measurement": measure.summary(c.measured) if c.measured else None,
        "skipped_frames": c.skipped_frames,
        "wcs": None if c.wcs is None else {"plausible": c.wcs.plausible, "scale_arcsec": c.wcs.scale_arcsec,
                                           "reason": c.wcs.reason},
        "catalog": {"path": str(c.catalog_path), **c.catalog_info},
        "cosmic_ray_rate_per_s_per_mpx": c.cosmic_ray_rate,
        "twin": None if c.twin is None else {"distances": c.twin.distances, "rounds": c.twin.rounds,
                                              "preset": _preset(c)},
        "engine": {"path": str(c.engine_dir), "real_labels": c.labels.counts() if c.labels else None,
                   "calibration_frames": c.calibration_frames},
        "operating_point": None if c.point is None else {
            "confidence_min": c.point.confidence_min, "epistemic_max_nats": c.point.epistemic_max_nats,
            "unusual_confidence_min": c.point.unusual_confidence_min, "min_new_snr": c.point.min_new_snr,
            "shares": c.point.shares, "detections": c.point.n_detections, "trimmed": c.point.trimmed},
        "notes": c.notes, "seconds": c.seconds,
    }


def _preset(c: Commissioning) -> dict[str, Any]:
    from edge.commission.twinfit import preset

    assert c.twin is not None
    return {**preset(c.twin.config), "n_stars": c.twin.config.n_stars, "n_galaxies": c.twin.config.n_galaxies,
            "cosmic_ray_rate_per_s": c.twin.config.cosmic_ray_rate_per_s}


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def _calibration(c: Commissioning) -> list[str]:
    if c.bundle is None:
        return ["## Calibration", "", "No bundle (no bias frames given).", ""]
    s = calib_summary(c.bundle)
    def pair(v: Any) -> str:
        return "-" if v is None else f"{v[0]:.4g} / {v[1]:.4g}"
    return ["## Calibration", "", f"Bundle `calibration.fits` (id {s['bundle_id']}): {s['n_bias']} biases, "
            f"{s['n_dark']} darks, flats {s['flats']}, {s['bad_pixels']} bad pixels "
            f"({s['science_hot_px']} hot pixels and {s['science_bad_columns']} bad columns found in the science frames).", "",
            "| gain source | gain e-/ADU / read noise e- |", "|---|---|",
            f"| headers | {pair(s['header'])} |", f"| photon transfer | {pair(s['photon_transfer'])} |",
            f"| sky of the science frames | {pair(s['sky_gain'])} (gain / its error) |",
            f"| **used ({s['noise_source']})** | **{s['gain_e_per_adu']:.4g} / {s['read_noise_e']:.4g}** |", "",
            f"{s['note']}.", ""]


def _measurements(c: Commissioning) -> list[str]:
    if not c.measured:
        return ["## The instrument", "", "Not measured: " + "; ".join(c.skipped_frames.values()), ""]
    s = measure.summary(c.measured)
    rows = ["## The instrument, measured", "",
            "| frame | sky e- | sky noise e- | FWHM px | beta | ellipticity | FWHM variation | detections | saturated px |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows += [f"| {m.name} | {m.sky_e:.0f} | {m.sky_noise_e:.1f} | {m.fwhm_px:.3f} | {m.beta:.2f} | {m.ellipticity:.3f} "
             f"| {m.fwhm_variation:+.3f} | {m.detections} | {m.saturated_px} |" for m in c.measured]
    rows += [f"| **median** | {s['sky_e']:.0f} | {s['sky_noise_e']:.1f} | {s['fwhm_px']:.3f} | {s['beta']:.2f} "
             f"| {s['ellipticity']:.3f} | {s['fwhm_variation']:+.3f} | {s['detections']:.0f} | {s['saturated_px']:.0f} |", ""]
    rows += ["FWHM (px) across the field, 3 x 3 cells (top row = low y): " +
             "; ".join(", ".join(f"{v:.2f}" for v in row) for row in s["fwhm_grid_px"]), ""]
    if c.cosmic_ray_rate is not None:
        rows += [f"Single-frame events of S/N >= 7 not in the reference catalog (cosmic rays, mostly): "
                 f"{c.cosmic_ray_rate:.3f} per second per million pixels.", ""]
    if c.skipped_frames:
        rows += ["Frames not measured: " + "; ".join(c.skipped_frames.values()), ""]
    return rows


def _wcs_and_catalog(c: Commissioning) -> list[str]:
    rows = ["## WCS and reference catalog", ""]
    if c.wcs is not None:
        verdict = "plausible: the node uses it" if c.wcs.plausible else "implausible: the node ignores it"
        rows += [f"Header WCS {verdict} ({c.wcs.reason}). "
                 + ("" if c.wcs.plausible else "Records carry null ra/dec; frames are registered onto the catalog "
                    "and matched in pixels."), ""]
    info = c.catalog_info
    rows += [f"Reference catalog `{c.catalog_path}`: {info.get('sources', 0)} sources from a median stack of "
             f"{sum(1 for o in info.get('offsets_px', []) if o is not None)} registered frames "
             f"(offsets px: {info.get('offsets_px')}). A detection of S/N >= 10 with no counterpart is `new`.", ""]
    return rows


def _twin(c: Commissioning, drawn: dict[str, str]) -> list[str]:
    if c.twin is None:
        return ["## Fitted twin", "", "Not fitted (no PSF could be measured).", ""]
    d = c.twin.distances
    rows = ["## Fitted twin", "", f"Fitted in {c.twin.rounds} rounds of render, measure and scale; the distances "
            "are from fresh twin frames measured by the same code as the real ones (twin / real - 1).", "",
            "| figure | real | twin | distance |", "|---|---|---|---|"]
    for key in ("fwhm_px", "sky_noise_e", "beta", "detections"):
        rows.append(f"| {key} | {d[key]['real']:.4g} | {d[key]['twin']:.4g} | {d[key]['distance']:+.1%} |")
    rows += ["", "Counts per flux bin (detections of S/N >= 5 per frame; bins with >= 50 real ones are counted):", "",
             "| log10 flux e- | real | twin | distance | Poisson error | counted |", "|---|---|---|---|---|---|"]
    for b in d["counts_per_flux_bin"]:
        dist = "-" if b["distance"] is None else f"{b['distance']:+.1%}"
        rows.append(f"| {b['log_flux_e'][0]:.2f}-{b['log_flux_e'][1]:.2f} | {b['real_per_frame']:.1f} "
                    f"| {b['twin_per_frame']:.1f} | {dist} | {b['error']:.1%} | {'yes' if b['counted'] else 'no'} |")
    med, mx = d["counts_median_distance"], d["counts_max_distance"]
    rows += ["", f"Counted bins: median |distance| {med:.1%}, largest {mx:.1%}." if med is not None else "", ""]
    rows += [f"![{k}](figures/{v})" for k, v in drawn.items()] + [""]
    rows += ["Twin preset (`commissioning.json`, `twin.preset`): " + json.dumps(_preset(c), default=_plain), ""]
    return rows


def _engine(c: Commissioning) -> list[str]:
    rows = ["## Engine", "", f"Engine folder `{c.engine_dir}`."]
    if c.labels is not None:
        rows += [f"Fine-tuned ({c.settings.epochs} epochs) on {c.settings.replay_frames} frames of the fitted twin "
                 f"and on stamps of the camera's own frames: {c.labels.counts()} (stars, galaxies and cosmic "
                 "rays: real detections whose label is not in doubt; the unusual families and streaks: "
                 f"injected, {c.settings.teach_rounds} rounds, each stamp three times)."]
    if c.point is not None:
        p = c.point
        rows += ["", f"Conformal set refit on {p.n_detections} detections of the frames the fine-tuning did not see "
                 f"({', '.join(c.calibration_frames) or 'every other detection'}), its highest {p.trimmed} left out.", "",
                 "| triage | value | share of those detections sent for it |", "|---|---|---|",
                 f"| alpha (unknown) | 0.01 | {p.shares['unknown']:.2%} |",
                 f"| confidence_min / epistemic_max_nats (uncertain) | {p.confidence_min:.3g} / {p.epistemic_max_nats:.3g} "
                 f"| {p.shares['uncertain']:.2%} |",
                 f"| unusual_confidence_min (unusual) | {p.unusual_confidence_min:.3g} | {p.shares['unusual']:.2%} |",
                 f"| min_new_snr (new) | {p.min_new_snr:g} | - |"]
    return rows + [""]


def _figures(c: Commissioning, out: Path) -> dict[str, str]:
    """Real and twin side by side; returns {caption: file name}."""
    if c.twin is None or "twin" not in c.images:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge import detect as detect_stage

    real, twin = c.images["real"], c.images["twin"]
    masks = {"real": c.images.get("real_mask"), "twin": c.images.get("twin_mask")}
    variances = {"real": c.images.get("real_var"), "twin": c.images.get("twin_var")}
    subs = {name: detect_stage.subtract_background(np.asarray(img, np.float32), masks[name], c.settings.detect).sub_e
            for img, name in ((real, "real"), (twin, "twin"))}
    fig, ax = plt.subplots(2, 2, figsize=(11, 9))
    for name in ("real", "twin"):
        v = np.asarray(subs[name], float)
        v = v[np.isfinite(v) & (masks[name] == 0)] if masks[name] is not None else v[np.isfinite(v)]
        noise = 1.4826 * float(np.median(np.abs(v - np.median(v))))
        ax[0, 0].hist(v, bins=200, range=(-6 * noise, 30 * noise), histtype="step", density=True,
                      label=f"{name}: noise {noise:.1f} e-")
    ax[0, 0].set(title=f"background-subtracted pixels, e- ({c.images.get('real_name', 'real')})", yscale="log")
    ax[0, 0].legend()
    for name in ("real", "twin"):
        r, prof, n = _radial_profile(subs[name], variances[name], masks[name], c.settings.detect)
        if n:
            ax[0, 1].plot(r, prof, marker=".", label=f"{name}: median of {n} isolated stars")
    fwhm, beta = c.twin.distances["fwhm_px"]["real"], c.twin.distances["beta"]["real"]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    rr = np.linspace(0, 6, 100)
    ax[0, 1].plot(rr, (1 + (rr / alpha) ** 2) ** -beta, ":", color="gray",
                  label=f"fitted Moffat: FWHM {fwhm:.2f} px, beta {beta:.2f}")
    ax[0, 1].set(title="PSF profile (peak 1)", xlabel="radius (px)", yscale="log", ylim=(1e-4, 1.5))
    ax[0, 1].legend()
    bins = c.twin.distances["counts_per_flux_bin"]
    x = [b["log_flux_e"][0] + 0.125 for b in bins]
    ax[1, 0].step(x, [b["real_per_frame"] for b in bins], where="mid", label="real")
    ax[1, 0].step(x, [b["twin_per_frame"] for b in bins], where="mid", label="twin")
    ax[1, 0].set(title="detections per frame against flux", xlabel="log10 flux (e-)", yscale="log")
    ax[1, 0].legend()
    both = np.hstack([_cutout(real), np.full((_CUT, 4), np.nan), _cutout(twin)])
    ax[1, 1].imshow(both, origin="lower", cmap="gray")
    ax[1, 1].set(title="cut-outs, asinh stretch: real (left), twin (right)")
    ax[1, 1].axis("off")
    fig.tight_layout()
    fig.savefig(out / "real_and_twin.png", dpi=90)
    plt.close(fig)
    return {"real and twin side by side": "real_and_twin.png"}


_CUT = 160


def _radial_profile(sub_e: Any, variance_e2: Any, mask: Any, settings: Any) -> tuple[Any, Any, int]:
    """Median radial profile (peak 1) of isolated, unflagged detections of S/N 50-1000, in 0.5 px
    bins from their centroids; the number of stars used."""
    from scipy.spatial import cKDTree

    from edge import detect as detect_stage

    cands = detect_stage.detect(sub_e, variance_e2, mask, settings)
    if len(cands) < 2:
        return np.zeros(0), np.zeros(0), 0
    d, _ = cKDTree(np.c_[cands.x, cands.y]).query(np.c_[cands.x, cands.y], k=2)
    pick = np.flatnonzero((cands.snr >= 50) & (cands.snr <= 1000) & (cands.flags == 0) & (d[:, 1] > 10))
    edges = np.arange(0, 6.5, 0.5)
    rows = []
    yy, xx = np.mgrid[-7:8, -7:8]
    for i in pick[:200]:
        ix, iy = int(round(float(cands.x[i]))), int(round(float(cands.y[i])))
        cut = sub_e[iy - 7:iy + 8, ix - 7:ix + 8]
        if cut.shape != (15, 15):
            continue
        r = np.hypot(xx + ix - cands.x[i], yy + iy - cands.y[i]).ravel()
        v = cut.ravel() / max(float(cut.max()), 1e-9)
        k = np.minimum((r / 0.5).astype(int), edges.size - 1)
        sums = np.bincount(k, weights=v, minlength=edges.size)[:-1]
        counts = np.bincount(k, minlength=edges.size)[:-1]
        rows.append(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
    if not rows:
        return np.zeros(0), np.zeros(0), 0
    table = np.asarray(rows)
    ok = np.isfinite(table).sum(axis=0) > 0
    prof = np.array([np.median(col[np.isfinite(col)]) for col in table.T[ok]])
    return (edges[:-1] + 0.25)[ok], np.clip(prof, 1e-5, None), len(rows)


def _cutout(img: Any) -> Any:
    a = np.asarray(img, float)
    ny, nx = a.shape
    y0, x0 = max(0, ny // 2 - _CUT // 2), max(0, nx // 2 - _CUT // 2)
    cut = a[y0:y0 + _CUT, x0:x0 + _CUT]
    sky = np.nanmedian(cut)
    noise = 1.4826 * np.nanmedian(np.abs(cut - sky)) or 1.0
    out = np.full((_CUT, _CUT), np.nan)
    out[:cut.shape[0], :cut.shape[1]] = np.arcsinh((cut - sky) / (3 * noise))
    return out
