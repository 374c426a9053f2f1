"""One simulated light frame, and a set of them on disk with truth and a reference catalog.

``simulate_frame`` strings the stages together: scene (from the sequence seed), sky background,
stars, galaxies, transients, anomalies, cosmic rays and streaks (into ``expected_e``), then the
detector (flat, dark, noise, bleed, ADU). ``write_frames`` is the thin I/O shell around it.
Same config and seed give identical bytes. Asked for (``light_by_family=True``), a frame also
carries the noise-free light of each truth family as its own image, so that labelling can ask
whose light a detection is made of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS
from numpy.typing import NDArray

from edge.errors import TwinError
from edge.log import get_logger
from twin.anomalies import IN_REFERENCE_CATALOG, draw_anomalies, render_anomalies
from twin.artifacts import add_cosmic_rays, add_streaks
from twin.astrometry import light_header, make_wcs, pixel_to_sky
from twin.detector import expose
from twin.instrument import Progress, TwinConfig, fixed_patterns
from twin.psf import inside_fraction, noise_area_px, psf_at
from twin.sky import (
    Rendered,
    draw_scene,
    flux_e,
    render_galaxies,
    render_point_sources,
    sky_at,
    sky_background_e,
)
from twin.truth import TruthBuilder, empty_truth, snr_expected

log = get_logger(__name__)


@dataclass(frozen=True)
class TwinFrame:
    """One simulated frame: what the camera writes, what truly lies in it, and its sky coordinates."""

    index: int
    raw_adu: NDArray[np.uint16]  # (ny, nx)
    header: fits.Header
    truth: Table
    expected_e: NDArray[np.float32]  # noise-free electrons before flat response; no dark, no bias
    wcs: WCS
    #: with ``simulate_frame(..., light_by_family=True)``: noise-free electrons of each truth family
    #: present ("star", "galaxy", "transient", each anomaly family, "cosmic_ray", "streak") and of
    #: the "sky", each a frame-sized float32 image; they sum to ``expected_e``. None otherwise.
    light_e: dict[str, NDArray[np.float32]] | None = None


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of everything that changes from frame to frame (noise, cosmic rays, streaks)."""
    return np.random.default_rng([seed, index, 0xF4A3])


def _flux_inside_and_area(config: TwinConfig, groups: list[Rendered], n: int,
                          flux: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """In-frame flux and noise-equivalent area per object of stamp groups (objects in input order)."""
    shape = config.detector.shape_px
    inside = np.zeros(n)
    nea = np.ones(n)
    for grp in groups:
        inside[grp.order] = inside_fraction(grp.stamps, grp.iy0, grp.ix0, shape)
        nea[grp.order] = noise_area_px(grp.stamps)
    return flux * inside, nea


def simulate_frame(config: TwinConfig, index: int, seed: int, *, light_by_family: bool = False) -> TwinFrame:
    """Simulate frame ``index`` of the sequence ``seed``: raw ADU, header, truth, expected electrons, WCS.

    ``light_by_family`` also returns each truth family's noise-free light (``TwinFrame.light_e``);
    it costs one frame-sized image per family and changes nothing else in the frame.
    """
    if index < 0 or seed < 0:
        raise TwinError(f"frame index and seed must be >= 0, got index={index}, seed={seed}", where="simulate_frame")
    det = config.detector
    rng = frame_rng(seed, index)
    scene = draw_scene(config, seed)
    wcs = make_wcs(config)
    expected, phi = sky_background_e(config, rng)
    light: dict[str, NDArray[np.float32]] | None = {"sky": expected.copy()} if light_by_family else None
    truth = TruthBuilder(index)
    dark_e = det.dark_e_per_s * config.exposure_s
    rn = det.read_noise_e

    def background(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        return sky_at(config, phi, x, y) + dark_e

    def add_sources(label: str, family: str, x: NDArray[np.float64], y: NDArray[np.float64],
                    mag: NDArray[np.float64], groups: list[Rendered], source_id: NDArray[np.int64] | int,
                    size_px: NDArray[np.float64] | float = 0.0) -> None:
        for grp in groups:
            grp.add_to(expected)
            if light is not None:
                grp.add_to(light.setdefault(family, np.zeros_like(expected)))
        flux = flux_e(config, mag)
        f_in, nea = _flux_inside_and_area(config, groups, len(x), flux)
        keep = f_in > 0
        sid = np.broadcast_to(np.asarray(source_id), (len(x),))
        size = np.broadcast_to(np.asarray(size_px, float), (len(x),))
        truth.add(label, family, x[keep], y[keep], f_in[keep], mag=mag[keep],
                  snr_expected=snr_expected(f_in[keep], nea[keep], background(x[keep], y[keep]), rn),
                  fwhm_px=psf_at(config, x[keep], y[keep]).fwhm_px, size_px=size[keep], source_id=sid[keep])

    n_stars, n_gal = len(scene.stars), len(scene.galaxies)
    st = scene.stars
    add_sources("star", "star", st.x, st.y, st.mag, render_point_sources(config, st.x, st.y, flux_e(config, st.mag)),
                np.arange(n_stars))
    gal = scene.galaxies
    assert gal.r_eff_px is not None
    add_sources("galaxy", "galaxy", gal.x, gal.y, gal.mag, render_galaxies(config, gal, flux_e(config, gal.mag)),
                n_stars + np.arange(n_gal), gal.r_eff_px)
    tr = scene.transients
    add_sources("transient", "transient", tr.x, tr.y, tr.mag,
                render_point_sources(config, tr.x, tr.y, flux_e(config, tr.mag)), -1)
    next_id = n_stars + n_gal
    for draw in draw_anomalies(config, seed, scene):
        n = len(draw.x)
        if draw.family in IN_REFERENCE_CATALOG:
            ids: NDArray[np.int64] | int = next_id + np.arange(n)
            next_id += n
        else:
            ids = -1
        add_sources("anomaly", draw.family, draw.x, draw.y, draw.mag, [render_anomalies(config, draw)], ids,
                    draw.size_px)

    for label, add in (("cosmic_ray", add_cosmic_rays), ("streak", add_streaks)):
        before = expected.copy() if light is not None else None
        dep = add(expected, config, rng)
        if light is not None and before is not None and len(dep.x):
            light[label] = expected - before
        truth.add(label, label, dep.x, dep.y, dep.flux_e,
                  snr_expected=snr_expected(dep.flux_e, dep.noise_area_px, background(dep.x, dep.y), rn),
                  fwhm_px=psf_at(config, dep.x, dep.y).fwhm_px if label == "streak" else 0.0,
                  size_px=dep.length_px, ends=dep.ends)

    hy, hx = np.nonzero(fixed_patterns(det).hot)
    hot_e = fixed_patterns(det).dark_e_per_s[hy, hx].astype(float) * config.exposure_s
    hx_f, hy_f = hx.astype(float), hy.astype(float)
    truth.add("hot_pixel", "hot_pixel", hx_f, hy_f, hot_e,
              snr_expected=snr_expected(hot_e, 1.0, sky_at(config, phi, hx_f, hy_f) + dark_e, rn))

    table = truth.table() if truth.groups else empty_truth()
    ra, dec = pixel_to_sky(wcs, np.asarray(table["x"]), np.asarray(table["y"]))
    table["ra_deg"] = ra
    table["dec_deg"] = dec
    raw, _saturated = expose(expected, det, config.exposure_s, rng)
    header = light_header(config, index, seed, wcs)
    return TwinFrame(index=index, raw_adu=raw, header=header, truth=table, expected_e=expected, wcs=wcs,
                     light_e=light)


def reference_catalog(config: TwinConfig, seed: int) -> Table:
    """The field's persistent sources (stars, galaxies, catalogued anomaly families): never transients."""
    scene = draw_scene(config, seed)
    wcs = make_wcs(config)
    xs = [scene.stars.x, scene.galaxies.x]
    ys = [scene.stars.y, scene.galaxies.y]
    mags = [scene.stars.mag, scene.galaxies.mag]
    labels = [np.full(len(scene.stars), "star"), np.full(len(scene.galaxies), "galaxy")]
    families = list(labels)
    for draw in draw_anomalies(config, seed, scene):
        if draw.family in IN_REFERENCE_CATALOG:
            xs.append(draw.x)
            ys.append(draw.y)
            mags.append(draw.mag)
            labels.append(np.full(len(draw.x), "anomaly"))
            families.append(np.full(len(draw.x), draw.family))
    x, y = np.concatenate(xs), np.concatenate(ys)
    ra, dec = pixel_to_sky(wcs, x, y)
    return Table({"source_id": np.arange(len(x)), "ra_deg": ra, "dec_deg": dec, "mag": np.concatenate(mags),
                  "label": np.concatenate(labels).astype("<U12"), "family": np.concatenate(families).astype("<U12"),
                  "x": x, "y": y})


def write_frames(out_dir: Path, config: TwinConfig, n: int, seed: int, *,
                 progress: Progress | None = None) -> list[Path]:
    """Write frame_0000.fits ... (raw uint16), truth.ecsv (all frames) and reference_catalog.ecsv.

    ``progress`` is told of each frame written (stage ``"writing frames"``, ``n`` in all).
    """
    if n < 1:
        raise TwinError(f"--n must be >= 1, got {n}", where="write_frames")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TwinError(f"cannot create output folder: {exc}; choose a writable --out", where=str(out_dir)) from exc
    paths, truths = [], []
    if progress is not None:
        progress("writing frames", 0, n)
    for i in range(n):
        frame = simulate_frame(config, i, seed)
        path = out_dir / f"frame_{i:04d}.fits"
        fits.PrimaryHDU(data=frame.raw_adu, header=frame.header).writeto(path, overwrite=True)
        paths.append(path)
        truths.append(frame.truth)
        log.info("twin.frame_written", path=str(path), index=i, n_truth=len(frame.truth))
        if progress is not None:
            progress("writing frames", 1, n)
    truth = vstack(truths) if truths else empty_truth()
    truth.meta["seed"] = seed
    truth.meta["exposure_s"] = config.exposure_s
    truth.write(out_dir / "truth.ecsv", overwrite=True)
    cat = reference_catalog(config, seed)
    cat.meta["seed"] = seed
    cat.write(out_dir / "reference_catalog.ecsv", overwrite=True)
    return paths
