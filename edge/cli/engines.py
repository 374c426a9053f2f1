"""``astro-edge engines train|evaluate|build|check|finetune``: the engine commands.

This module declares the arguments, checks them, calls the library functions
(:func:`engines.training.train.train_engine`, :func:`engines.training.evaluation.reevaluate`,
:func:`engines.build.build_engine`, :func:`engines.check.check_engine`,
:func:`engines.training.finetune.finetune_engine`) and prints what they return. Each handler
imports its heavy module (torch, onnx, onnxruntime, tensorrt) when it runs, so ``astro-edge
--help`` stays fast and the node never pulls torch in through the command line. ``--model``
defaults to the shipped engine, found when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from edge.cli.progress import Bars
from edge.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``engines`` command group."""
    parser = subparsers.add_parser(
        "engines", help="train, evaluate, build, check and fine-tune neural engines",
        description="The neural engines that classify stamps and score how unusual they are: train "
                    "one on the digital twin, measure it again, choose the precision for this device, "
                    "check every backend against the golden outputs, fine-tune on labelled stamps "
                    "(docs/engines.md, docs/engines-runtime.md).")
    sub = parser.add_subparsers(dest="engines_command", metavar="ACTION", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_build(sub)
    _add_check(sub)
    _add_sign(sub)
    _add_finetune(sub)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="engine folder (default: the shipped engine)")


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train an engine on twin frames and write its folder (needs the train extra)",
        description="Simulate labelled twin frames, train the stamp ensemble with outlier exposure, "
                    "export FP32, FP16 and INT8 ONNX files, fit the scoring constants (temperature, "
                    "entropy weight, conformal set) on held-out frames, evaluate on fresh frames with "
                    "every anomaly family and write a verified engine folder with its manifest and "
                    "model card. One command from seed to engine: the same arguments give the same "
                    "engine. Needs the train extra (torch).")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="engine folder to write (created)")
    p.add_argument("--name", default="stampnet", metavar="NAME",
                   help="engine name in the manifest (default: stampnet)")
    p.add_argument("--version", default="1", metavar="VERSION", help="engine version in the manifest (default: 1)")
    p.add_argument("--seed", type=int, default=20261128, metavar="N", help="master seed (default: 20261128)")
    p.add_argument("--design", choices=["shared", "independent"], default="shared",
                   help="ensemble design: one trunk with K heads, or K independent members (default: shared)")
    p.add_argument("--members", type=int, default=4, metavar="N", help="ensemble size K (default: 4)")
    p.add_argument("--widths", default="24,48,96", metavar="N,N,N",
                   help="channels of the three conv blocks, comma-separated (default: 24,48,96)")
    p.add_argument("--frame-size", type=int, default=512, metavar="PX",
                   help="twin frame side in pixels (default: 512)")
    p.add_argument("--train-frames", type=int, default=240, metavar="N",
                   help="twin frames for training (default: 240)")
    p.add_argument("--calib-frames", type=int, default=80, metavar="N",
                   help="held-out twin frames for temperature, entropy weight and conformal set (default: 80)")
    p.add_argument("--eval-frames", type=int, default=180, metavar="N",
                   help="fresh twin frames for evaluation, at the training densities (default: 180)")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="training epochs (default: 20)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads for torch (default: 2)")
    p.add_argument("--unusual", default="lens_arc,comet,lobster_psf,ghost", metavar="LIST",
                   help="twin families taught as classes, comma-separated, or 'none' "
                        "(default: lens_arc,comet,lobster_psf,ghost)")
    p.add_argument("--views", type=int, choices=[1, 2], default=2,
                   help="1: the 32 px stamp alone; 2: the stamp and its binned 96 px context (default: 2)")
    p.add_argument("--densities", default="1,1,0.3,0.05", metavar="LIST",
                   help="star and galaxy densities of the twin frames relative to the training mix, in equal "
                        "shares of the frames, comma-separated (default: 1,1,0.3,0.05)")
    p.add_argument("--anomalies-per-frame", type=int, default=6, metavar="N",
                   help="objects of each unusual family per 512x512 px of twin frame (default: 6)")
    p.add_argument("--deformed-oe", type=float, default=0.0, metavar="SHARE",
                   help="share of the outlier-exposure stamps made by deforming twin stars and galaxies "
                        "(engines/training/deform.py; the shipped engine: 0, blob shapes only) (default: 0)")
    p.add_argument("--real-data", type=Path, default=None, metavar="DIR",
                   help="folder holding sep-ntt/ and gmos-cr/ (as tests/data/real does) to classify for "
                        "the model card (default: no real-frame classification)")
    p.add_argument("--no-real", action="store_true",
                   help="skip the real-frame classification even when --real-data is given")
    p.set_defaults(func=_train)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="measure an engine again on its fresh twin set (needs the twin extra)",
        description="Rebuild an engine's evaluation set from the seed and frame size in its manifest "
                    "(seed + 2, every anomaly family), run every precision's model file with ONNX "
                    "Runtime and print the figures. With --write they replace the manifest's "
                    "evaluation and the model card is regenerated; the model files, and so the "
                    "engine id, do not change. Needs the twin extra, not torch.")
    _add_model(p)
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="evaluation frames (default: as many as the engine was evaluated on)")
    p.add_argument("--threads", type=int, default=2, metavar="N",
                   help="intra-op threads for ONNX Runtime (default: 2)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="draw the evaluation frames from this seed instead of the engine's own (seed + 2)")
    p.add_argument("--write", action="store_true",
                   help="store the figures in the manifest and regenerate the model card (model files unchanged)")
    p.set_defaults(func=_evaluate)


def _add_build(sub: Any) -> None:
    p = sub.add_parser(
        "build", help="measure each precision on this device and write a build manifest",
        description="Time every candidate precision of the chosen backend at the batch size and check "
                    "each against the accuracy gate (golden-stamp parity with FP32, within the "
                    "manifest's tolerances); keep the fastest that passes (--precision auto) or the "
                    "named one if it passes, then time the chosen one at batches of 16 to 512 and keep the "
                    "smallest within 5 % of the fastest ([engine] batch_size = 0 runs it); record the "
                    "choice and every figure in the manifest's build record. TensorRT plans are built "
                    "here, with a timing cache. Backend auto: "
                    "TensorRT where TensorRT, pycuda and a GPU are present, else ONNX Runtime.")
    _add_model(p)
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto",
                   help="runtime to build for (default: auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                   help="auto: the fastest precision that passes the accuracy gate (default: auto)")
    p.add_argument("--batch", type=int, default=512, metavar="N",
                   help="batch size to time and to build for (default: 512)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="intra-op threads for ONNX Runtime (default: 1)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder to write the built engine to, model files copied (default: the model folder)")
    p.set_defaults(func=_build)


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check", help="parity of every available backend and precision against FP32 on golden stamps",
        description="Run the golden stamps through every backend and precision of an engine folder "
                    "that can run here and compare logits, embedding and top-1 class with the stored "
                    "FP32 outputs, within the manifest's tolerances. TensorRT plans are checked only "
                    "where TensorRT, pycuda and a compatible GPU are present, and reported as skipped "
                    "elsewhere. Exit 0 when every runnable file passes, 1 otherwise.")
    _add_model(p)
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="intra-op threads for ONNX Runtime (default: 1)")
    p.set_defaults(func=_check)


def _add_sign(sub: Any) -> None:
    p = sub.add_parser(
        "sign", help="sign an engine folder's manifest with an Ed25519 key",
        description="Write MODEL/manifest.json.sig, an Ed25519 signature of the manifest (which lists the "
                    "sha256 of every file), with a key made by `astro-edge keys new --signing`. A node whose "
                    "[engine] trusted_keys lists the matching NAME.verify_key loads only engines signed so.")
    _add_model(p)
    p.add_argument("--key", type=Path, required=True, metavar="FILE", help="NAME.sign_key to sign with")
    p.set_defaults(func=_sign)


def _sign(args: argparse.Namespace) -> int:
    from engines.manifest import load_manifest
    from engines.signing import sign_engine

    folder = _model_dir(args.model)
    load_manifest(folder)   # sign only what verifies
    print(f"signed: {sign_engine(folder, args.key)}")
    return 0


def _add_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune an engine on labelled stamps and write a new engine",
        description="Continue training an engine made by `engines train` on labelled stamps (e.g. "
                    "ground labels of downlinked records), mixed with a small replay set of twin "
                    "frames so that no class is forgotten. A label the engine does not have is a new "
                    "class: every head grows an output for it, and only the new outputs are fitted (the "
                    "network and the trained outputs stay as they are), then held back until the class "
                    "claims at most 0.2 % of held-out replay candidates. A fixed-seed fifth of the labels is held "
                    "out; the new engine gets fresh scoring constants, the full twin evaluation, the "
                    "held-out figures and its own manifest, ready to hot-swap with `astro-edge ctl "
                    "ADDRESS engine load`. Needs the train extra (torch).")
    p.add_argument("--from", dest="from_manifest", type=Path, required=True, metavar="PATH",
                   help="manifest.json (or its folder) of the engine to start from")
    p.add_argument("--labels", type=Path, required=True, metavar="FILE",
                   help="labelled stamps: .npz with 'stamps' (n, channels, 32, 32) float32, cut by the engine's "
                        "recipe (as records carry them), and 'label' (class names; a new name adds a class)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the new engine (created)")
    p.add_argument("--version", default=None, metavar="VERSION",
                   help="version of the new engine (default: old version + '-ft')")
    p.add_argument("--epochs", type=int, default=3, metavar="N",
                   help="fine-tuning epochs of the whole network, for labels of classes the engine has (default: 3)")
    p.add_argument("--learning-rate", type=float, default=5e-4, metavar="RATE",
                   help="peak learning rate of those epochs (default: 5e-4)")
    p.add_argument("--seed", type=int, default=20261128, metavar="N",
                   help="seed of the split and the updates (default: 20261128)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads for torch (default: 2)")
    p.set_defaults(func=_finetune)


def _model_dir(model: Path | None) -> Path:
    """The engine folder of --model: the one given, or the shipped engine."""
    if model is not None:
        return model
    from edge.node.assemble import default_engine_dir

    return default_engine_dir()


def _command_line(default: str) -> str:
    """The command as typed, for an engine's provenance (``default`` when run without arguments)."""
    return "astro-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else default


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _train(args: argparse.Namespace) -> int:
    from edge.log import get_logger
    from engines.training.dataset import CLASSES, UNUSUAL_CLASSES
    from engines.training.model import ModelSpec
    from engines.training.train import TrainSettings, train_engine

    if args.members < 1 or args.epochs < 1 or min(args.train_frames, args.calib_frames, args.eval_frames) < 1:
        raise ConfigError("members, epochs and frame counts must be at least 1", where="engines train")
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"--widths {args.widths!r} must be three positive integers like 16,32,64",
                          where="--widths")
    if not 0.0 <= args.deformed_oe <= 1.0:
        raise ConfigError(f"--deformed-oe {args.deformed_oe} must lie in [0, 1]", where="--deformed-oe")
    if args.frame_size < 128:
        raise ConfigError(f"--frame-size {args.frame_size} is too small for 32 px stamps; use >= 128",
                          where="--frame-size")
    unusual = () if args.unusual.strip() == "none" else tuple(f.strip() for f in args.unusual.split(",") if f.strip())
    wrong = [f for f in unusual if f not in UNUSUAL_CLASSES]
    if wrong:
        raise ConfigError(f"--unusual {wrong} are not families the twin renders as classes; choose from "
                          f"{list(UNUSUAL_CLASSES)} or 'none'", where="--unusual")
    try:
        densities = tuple(float(d) for d in args.densities.split(","))
    except ValueError:
        densities = ()
    if not densities or min(densities) <= 0:
        raise ConfigError(f"--densities {args.densities!r} must be positive numbers like 1,0.3", where="--densities")
    if args.anomalies_per_frame < 1:
        raise ConfigError("--anomalies-per-frame must be at least 1", where="--anomalies-per-frame")
    settings = TrainSettings(seed=args.seed, frame_size_px=args.frame_size, n_train_frames=args.train_frames,
                             n_calib_frames=args.calib_frames, n_eval_frames=args.eval_frames,
                             epochs=args.epochs, threads=args.threads, oe_deformed_share=args.deformed_oe,
                             unusual=unusual, anomalies_per_frame=args.anomalies_per_frame, densities=densities,
                             spec=ModelSpec(n_classes=len(CLASSES) + len(unusual), n_members=args.members,
                                            design=args.design, widths=widths, views=args.views))
    real = None if args.no_real else args.real_data
    if real is not None and not Path(real).is_dir():
        raise ConfigError(f"{real} is not a folder of real frames", where="--real-data")
    with Bars(quiet=args.quiet) as bars:
        written = train_engine(args.out, settings, name=args.name, version=args.version,
                               command=_command_line("astro-edge engines train"), real_data=real,
                               log=get_logger("engines.training.train"), progress=bars)
    print(f"engine {written.name} {written.version} written to {written.directory}")
    _print_figures(written.evaluation)
    return 0


def _print_figures(ev: dict[str, Any]) -> None:
    """The headline figures of an evaluation: ordinary classes per precision, then every family."""
    for p in ("fp32", "fp16", "int8"):
        e = ev.get(p)
        if e:
            agree = e.get("top1_agreement_vs_fp32")
            print(f"{p}: accuracy S/N>=10 {e['accuracy_snr10']:.4f}, ECE {e['ece_snr10']:.4f}, ordinary flagged "
                  f"unknown at alpha={e['alpha']} {e['flagged_ordinary_at_alpha']:.4f} (alpha=0.05: "
                  f"{_fmt(e.get('flagged_ordinary_at_alpha_wide'), 4)}), as unusual {_fmt(e.get('ordinary_as_unusual'), 4)}, "
                  f"joint {_fmt(e.get('ordinary_flagged_joint'), 4)}"
                  + ("" if agree is None else f", top-1 agreement with fp32 {agree:.4f}"))
    print(f"  {'family':<13} {'n S/N>=20':>9} {'AUROC':>7} {'unknown':>8} {'own class':>9} {'sent':>6} {'(95% low)':>9}")
    for fam, f in ev["fp32"]["families"].items():
        own = f.get("own_class_snr20") or {}
        sent = f.get("flagged_snr20") or {}
        print(f"  {fam:<13} {f['n_snr20']:>9} {f['auroc']:>7.4f} {_fmt(f['recall_snr20_at_alpha']):>8} "
              f"{_fmt(own.get('recall')):>9} {_fmt(sent.get('recall')):>6} {_fmt(sent.get('wilson_low')):>9}")
    near = ev["fp32"].get("near_anomaly", {})
    if near.get("n"):
        print(f"  near an anomaly, not made of its light: {near['n']} (flagged {_fmt(near['flagged_at_alpha'])})")
    budget = ev["fp32"].get("budget")
    if budget:
        print(f"under one budget (alpha={budget['alpha']}, unusual calls of p >= {budget.get('unusual_min', 0.0)}): "
              f"ordinary flagged {budget['ordinary_flagged']:.4f}; sent S/N>=20 "
              + ", ".join(f"{k} {_fmt(v['recall'])} (>= {_fmt(v['wilson_low'])})" for k, v in budget["families"].items()))


def _evaluate(args: argparse.Namespace) -> int:
    from engines.training.evaluation import reevaluate

    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames {args.frames} must be at least 1", where="--frames")
    model = _model_dir(args.model)
    with Bars(quiet=args.quiet) as bars:
        ev = reevaluate(model, n_frames=args.frames, seed=args.seed, threads=args.threads, write=args.write,
                        progress=bars)
    _print_figures(ev)
    if args.write:
        print(f"written to {model / 'manifest.json'} and {model / 'MODEL_CARD.md'}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from engines.build import build_engine

    written = build_engine(_model_dir(args.model), args.out, backend=args.backend, precision=args.precision,
                           batch=args.batch, threads=args.threads)
    build = written.build
    print(f"{'precision':<9} {'stamps/s':>10} {'top1':>6} {'logits|d|':>10}  gate")
    for prec, f in build.figures["precisions"].items():
        if "stamps_per_s" in f:
            print(f"{prec:<9} {f['stamps_per_s']:>10.0f} {f['top1_agreement']:>6.3f} "
                  f"{f['logits_max_abs']:>10.2e}  {'pass' if f['passed'] else 'fail'}")
        else:
            print(f"{prec:<9} {'-':>10} {'-':>6} {'-':>10}  error: {f.get('error')}")
    print(f"chosen: {build.backend} {build.precision} ({build.file}) on {build.device}; "
          f"written to {written.directory}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from engines.check import check_engine

    results = check_engine(_model_dir(args.model), threads=args.threads)
    print(f"{'backend':<12} {'precision':<9} {'file':<24} {'logits|d|':>10} {'embed|d|':>10} {'top1':>6}  result")
    for r in results:
        if r.skipped:
            print(f"{r.backend:<12} {r.precision:<9} {r.file:<24} {'':>10} {'':>10} {'':>6}  skipped: {r.skipped}")
        else:
            print(f"{r.backend:<12} {r.precision:<9} {r.file:<24} {r.logits_max_abs:>10.2e} "
                  f"{r.embedding_max_abs:>10.2e} {r.top1_agreement:>6.3f}  {'pass' if r.passed else 'FAIL'}")
    return 0 if all(r.passed for r in results) else 1


def _finetune(args: argparse.Namespace) -> int:
    from engines.training.finetune import finetune_engine

    if args.epochs < 1 or args.learning_rate <= 0:
        raise ConfigError("--epochs must be >= 1 and --learning-rate positive", where="engines finetune")
    src = args.from_manifest.parent if args.from_manifest.name == "manifest.json" else args.from_manifest
    with Bars(quiet=args.quiet) as bars:
        written = finetune_engine(src, args.labels, args.out, version=args.version, epochs=args.epochs,
                                  learning_rate=args.learning_rate, seed=args.seed, threads=args.threads,
                                  command=_command_line("astro-edge engines finetune"), progress=bars)
    ft = written.evaluation["finetune"]
    fp32 = written.evaluation["fp32"]
    new = ft.get("new_classes") or []
    print(f"engine {written.name} {written.version} written to {written.directory}"
          + (f" with the new classes {', '.join(new)}" if new else "")
          + f": held-out accuracy {ft['heldout_accuracy']:.4f} (n = {ft['heldout_n']}), ECE {ft['heldout_ece']:.4f}; "
          f"twin accuracy S/N>=10 {fp32['accuracy_snr10']:.4f}")
    if new:
        print(f"to send them as unusual, add {new} to [triage] classes_of_interest on the node")
    return 0
