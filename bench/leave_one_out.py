"""Leave one family out: the unknown score on a family nobody simulated, and new classes from k labels.

First, for each family F of ``--families`` an engine is trained exactly as ``astro-edge engines train``
trains one (same recipe, same seed; ``--train-frames``, ``--calib-frames`` and ``--epochs`` may be
fewer), except that F is neither one of its classes nor rendered in its training and calibration
frames. Its scoring constants are fitted as the command fits them. On the evaluation set (seed + 2,
every family, the frames ``engines evaluate`` uses; ``--eval-seed`` for another) it reports:

- F by the unknown score alone: AUROC against every ordinary candidate and recall at
  alpha = 0.01 at S/N >= 20 (with the 95 % Wilson lower bound);
- the conformal false-flag rate of ordinary candidates at alpha = 0.01 and 0.05.

Then, for each family of ``--finetune`` (a subset of ``--families``), the engine trained without F
learns F from k labelled stamps (k of ``--k``, ``--draws`` random draws each) with
:func:`engines.training.finetune.finetune_model`, the core of ``astro-edge engines finetune``: the
stamps are drawn from candidates of F (S/N >= 10) on twin frames of their own seed (``SEED_LABELS``),
the replay set is ``--replay-frames`` training frames (the first of every density's share, as
the command's replay frames are drawn; a third as many calibration frames), the class Gaussians are fitted on
up to 1500 training stamps of each class. Reported per k (mean and range over
the draws): F's recall as its own class at S/N >= 20, the change of ordinary accuracy (S/N >= 10)
against the engine before fine-tuning, and the ordinary candidates flagged (unusual or unknown at
alpha = 0.01; the joint budget).

    .venv/bin/python bench/leave_one_out.py [--families comet,ghost,lens_arc,lobster_psf]
        [--finetune comet,lens_arc,lobster_psf] [--k 10,30,100] [--draws 5]
        [--train-frames 240] [--calib-frames 80] [--epochs 16] [--cache DIR] [--json FILE]

Needs the train extra (torch). Each leave-one-out engine's weights are kept in ``--cache DIR``
(default ``bench/out/leave_one_out``) and reused by the next run with the same options, and by
bench/new_class_cap.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: seed of the twin frames the "ground labels" of the fine-tuning runs are drawn from
SEED_LABELS = 777000
#: stamps per class the fine-tuned engines' class Gaussians are fitted on
GAUSSIAN_STAMPS = 1500


def main() -> int:
    import numpy as np

    from edge.cli.progress import Bars
    from engines.training.dataset import CLASSES, UNUSUAL_CLASSES, twin_stamp_set
    from engines.training.finetune import finetune_model
    from engines.training.train import (
        ALPHA,
        TrainSettings,
        evaluate,
        evaluation_set,
        fit_model,
        fit_scoring,
        load_weights,
        make_twin_sets,
        node_calibrated,
        predict,
        save_weights,
        training_copies,
        training_twin_config,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(UNUSUAL_CLASSES))
    parser.add_argument("--finetune", default="comet,lens_arc,lobster_psf")
    parser.add_argument("--k", default="10,30,100")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--train-frames", type=int, default=240)
    parser.add_argument("--calib-frames", type=int, default=80)
    parser.add_argument("--eval-frames", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--replay-frames", type=int, default=24)
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--label-frames", type=int, default=40, help="twin frames the labelled stamps come from")
    parser.add_argument("--eval-seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("bench/out/leave_one_out"),
                        help="folder that keeps each leave-one-out engine's weights (default: bench/out/leave_one_out)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    tuned = [f for f in args.finetune.split(",") if f]
    ks = [int(k) for k in args.k.split(",") if k]

    started = time.perf_counter()
    base = TrainSettings(n_train_frames=args.train_frames, n_calib_frames=args.calib_frames,
                         n_eval_frames=args.eval_frames, epochs=args.epochs, threads=args.threads)
    bars = Bars()
    test, _ = evaluation_set(base, seed=args.eval_seed, progress=bars)
    report: dict[str, dict[str, object]] = {}

    def outputs(model: object, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict(model, stamps)

    def scored(model: object, settings: TrainSettings, sets: object, extra: tuple[np.ndarray, np.ndarray] | None = None):
        train_x, train_y = sets.train.stamps, sets.train.labels
        if extra is not None:
            train_x, train_y = np.concatenate([train_x, extra[0]]), np.concatenate([train_y, extra[1]])
        constants, _ = fit_scoring(outputs(model, train_x), train_y, outputs(model, sets.calib.stamps),
                                   sets.calib.labels, outputs(model, sets.oe_val), settings.seed,
                                   n_classes=len(settings.classes), unknown_distance=settings.unknown_distance,
                                   conformal_pool=node_calibrated(settings, sets.calib))
        return evaluate(outputs(model, test.stamps), test, constants, classes=settings.classes)

    trained: dict[str, tuple[object, TrainSettings, object, dict[str, object]]] = {}
    for fam in families:
        unusual = tuple(f for f in base.unusual if f != fam)
        settings = dataclasses.replace(base, unusual=unusual,
                                       spec=dataclasses.replace(base.spec, n_classes=len(CLASSES) + len(unusual)))
        sets = make_twin_sets(settings, test=test, progress=bars)
        key = f"without-{fam}-{args.train_frames}-{args.calib_frames}-{args.epochs}-field.npz"
        cached = args.cache / key if args.cache else None
        if cached is not None and cached.is_file():
            from engines.training.model import StampEnsemble

            model = StampEnsemble(settings.spec)
            model.load_state_dict(load_weights(cached))
            model.eval()
        else:
            repeat = training_copies(settings, sets.train)
            model = fit_model(np.repeat(sets.train.stamps, repeat, axis=0), np.repeat(sets.train.labels, repeat),
                              sets.oe_train, settings, progress=bars)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_weights(model, cached)
        ev = scored(model, settings, sets)
        f = ev["families"][fam]
        row: dict[str, object] = {"auroc": f["auroc"], "unknown_snr20": f["unknown_snr20"],
                                  "flagged_ordinary_0.01": ev["flagged_ordinary_at_alpha"],
                                  "flagged_ordinary_0.05": ev["flagged_ordinary_at_alpha_wide"],
                                  "accuracy_snr10": ev["accuracy_snr10"],
                                  "ordinary_flagged_joint": ev["ordinary_flagged_joint"],
                                  "seconds": round(time.perf_counter() - started)}
        print(f"without {fam}: AUROC {f['auroc']:.3f}, recall at alpha={ALPHA} S/N>=20 "
              f"{f['unknown_snr20']['recall']:.3f} (low {f['unknown_snr20']['wilson_low']:.3f}, n {f['n_snr20']}); "
              f"ordinary flagged {ev['flagged_ordinary_at_alpha']:.4f} at 0.01, "
              f"{ev['flagged_ordinary_at_alpha_wide']:.4f} at 0.05 ({row['seconds']} s)", flush=True)
        report[fam] = row
        if fam in tuned:
            trained[fam] = (model, settings, sets, row)

    for fam, (model, settings, sets, row) in trained.items():
        labelled = twin_stamp_set(training_twin_config(base.frame_size_px, anomalies=(fam,),
                                                       per_frame=base.anomalies_per_frame),
                                  args.label_frames, SEED_LABELS, recipe=base.recipe, progress=bars,
                                  stage=f"simulating frames with {fam} to label")
        pool_idx = np.flatnonzero((labelled.family == fam) & (labelled.snr >= 10))
        # the replay set of `engines finetune`: the first frames of every density's share
        share = 1000 * max(1, base.unmasked_every)
        per = max(1, args.replay_frames // len(base.densities))
        replay = dataclasses.replace(sets, train=sets.train.select(sets.train.frame % share < per),
                                     calib=sets.calib.select(sets.calib.frame % share < max(1, per // 3)))
        # the class Gaussians of the fine-tuned engines: at most GAUSSIAN_STAMPS of each class from the
        # whole training set (the replay frames alone may lack a rare class)
        pick_rng = np.random.default_rng(SEED_LABELS)
        keep = np.concatenate([pick_rng.permutation(np.flatnonzero(sets.train.labels == c))[:GAUSSIAN_STAMPS]
                               for c in range(len(settings.classes))])
        gaussians = dataclasses.replace(sets, train=sets.train.select(np.sort(keep)))
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        finetune: dict[str, object] = {}
        for k in ks:
            runs = []
            for draw in range(args.draws):
                pick = np.random.default_rng([SEED_LABELS, k, draw]).choice(pool_idx, size=k, replace=False)
                names = np.array([fam] * k)
                ft_model, ft_settings = finetune_model(settings, state, replay, labelled.stamps[pick], names,
                                                       seed=base.seed + draw, epochs=args.ft_epochs,
                                                       learning_rate=5e-4, threads=args.threads)
                label = np.full(k, len(ft_settings.classes) - 1, np.int64)
                ft = scored(ft_model, ft_settings, gaussians, (labelled.stamps[pick], label))
                own = ft["families"][fam]["own_class_snr20"]
                runs.append({"recall": own["recall"], "wilson_low": own["wilson_low"], "n": own["n"],
                             "accuracy_change": ft["accuracy_snr10"] - float(row["accuracy_snr10"]),  # type: ignore[arg-type]
                             "ordinary_flagged_joint": ft["ordinary_flagged_joint"]})
            rec = [r["recall"] for r in runs]
            acc = [r["accuracy_change"] for r in runs]
            joint = [r["ordinary_flagged_joint"] for r in runs]
            finetune[str(k)] = runs
            print(f"  learn {fam} from k={k:<3}: recall S/N>=20 mean {np.mean(rec):.3f} "
                  f"[{min(rec):.3f}, {max(rec):.3f}], ordinary accuracy change {np.mean(acc):+.4f} "
                  f"[{min(acc):+.4f}, {max(acc):+.4f}], ordinary flagged {np.mean(joint):.4f} "
                  f"[{min(joint):.4f}, {max(joint):.4f}] ({time.perf_counter() - started:.0f} s)", flush=True)
        row["finetune"] = finetune
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=1))
    bars.close()
    aurocs = [float(r["auroc"]) for r in report.values()]  # type: ignore[arg-type]
    print(f"mean AUROC {np.mean(aurocs):.3f}; command: {' '.join(sys.argv)}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
