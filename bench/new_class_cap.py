"""How much of a new class does a claim cap cost? Recall against ordinary claims when the class is learned from k labels.

On the leave-one-out engine of ``--family`` (the weights ``bench/leave_one_out.py`` keeps in its
``--cache``, same ``--train-frames``, ``--calib-frames`` and ``--epochs``), one draw of k labelled
stamps of the family (S/N >= 10, twin frames of seed ``SEED_LABELS``, as the bench draws them)
is learned as ``engines finetune`` learns a new class: new outputs imprinted and fitted on the
frozen network (:func:`engines.training.finetune.fit_new_outputs`) against the replay set of the
command (the first 6 training frames of every density's share). Then the new class's bias is
settled (:func:`engines.training.finetune.settle_new_classes`) to claim at most each cap of
``--caps`` of the replay set's 8 calibration frames (1: not settled), and the engine is scored
on ``--eval-frames`` evaluation frames: the family's recall as its own class at S/N >= 20, the
ordinary accuracy change at S/N >= 10 against the engine before, and the share of ordinary
candidates the new class takes.

    .venv/bin/python bench/new_class_cap.py [--cache DIR] [--family comet] [--k 10,30]
        [--caps 0.002,0.005,0.01,1] [--eval-frames 60] [--train-frames 240] [--calib-frames 80] [--epochs 20]

Needs the train extra (torch) and the cached engine. About 4 minutes on two cores.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: the seed of the labelled stamps' frames (bench/leave_one_out.py's SEED_LABELS)
SEED_LABELS = 777000


def main() -> int:
    import numpy as np

    from engines.scoring import member_probabilities
    from engines.training.dataset import CLASSES, twin_stamp_set
    from engines.training.finetune import (
        fit_new_outputs,
        grow_heads,
        head_imprints,
        settle_new_classes,
    )
    from engines.training.model import StampEnsemble
    from engines.training.train import (
        TrainSettings,
        evaluation_set,
        load_weights,
        make_twin_sets,
        predict,
        training_twin_config,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("bench/out/leave_one_out"),
                        help="bench/leave_one_out.py's --cache folder (default: its default)")
    parser.add_argument("--family", default="comet")
    parser.add_argument("--k", default="10,30")
    parser.add_argument("--caps", default="0.002,0.005,0.01,1")
    # the leave-one-out bench's defaults, so that `./build.sh bench` finds the engines it kept
    parser.add_argument("--train-frames", type=int, default=240)
    parser.add_argument("--calib-frames", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--eval-frames", type=int, default=60)
    parser.add_argument("--label-frames", type=int, default=20)
    args = parser.parse_args()

    fam = args.family
    base = TrainSettings(n_train_frames=args.train_frames, n_calib_frames=args.calib_frames,
                         n_eval_frames=args.eval_frames, epochs=args.epochs)
    unusual = tuple(f for f in base.unusual if f != fam)
    settings = dataclasses.replace(base, unusual=unusual,
                                   spec=dataclasses.replace(base.spec, n_classes=len(CLASSES) + len(unusual)))
    weights = args.cache / f"without-{fam}-{args.train_frames}-{args.calib_frames}-{args.epochs}-field.npz"
    if not weights.is_file():
        print(f"no leave-one-out engine at {weights}: run bench/leave_one_out.py --train-frames {args.train_frames} "
              f"--calib-frames {args.calib_frames} --epochs {args.epochs} --families {fam} --cache {args.cache} first",
              file=sys.stderr)
        return 2
    state = load_weights(weights)
    test, _ = evaluation_set(base, args.eval_frames)
    sets = make_twin_sets(settings, test=test)
    labelled = twin_stamp_set(training_twin_config(base.frame_size_px, anomalies=(fam,),
                                                   per_frame=base.anomalies_per_frame),
                              args.label_frames, SEED_LABELS, recipe=base.recipe)
    pool = np.flatnonzero((labelled.family == fam) & (labelled.snr >= 10))
    share = 1000 * max(1, base.unmasked_every)
    replay_train = sets.train.select(sets.train.frame % share < 6)
    replay_calib = sets.calib.select(sets.calib.frame % share < 2)
    new = [len(settings.classes)]
    grown = dataclasses.replace(settings.spec, n_classes=settings.spec.n_classes + 1)
    ordinary = (test.labels >= 0) & (test.labels < len(CLASSES))
    bright = ordinary & (test.snr >= 10)
    strong = (test.family == fam) & (test.snr >= 20)

    def top(logits: np.ndarray) -> np.ndarray:
        return member_probabilities(logits).mean(axis=1).argmax(axis=1)

    before = StampEnsemble(settings.spec)
    before.load_state_dict(state)
    accuracy_before = (top(predict(before, test.stamps)[0])[bright] == test.labels[bright]).mean()
    print(f"engine without {fam}: {int(strong.sum())} of the family at S/N >= 20, {int(ordinary.sum())} ordinary; "
          f"accuracy before {accuracy_before:.4f}")
    for k in (int(x) for x in args.k.split(",") if x):
        pick = np.random.default_rng([SEED_LABELS, k, 0]).choice(pool, size=k, replace=False)
        labels = np.full(k, new[0])
        model = StampEnsemble(grown)
        model.load_state_dict(grow_heads(state, 1, head_imprints(settings.spec, state, labelled.stamps[pick],
                                                                 labels, new)))
        model.eval()
        fit_new_outputs(model, np.concatenate([replay_train.stamps, labelled.stamps[pick]]),
                        np.concatenate([replay_train.labels, labels]), new, seed=base.seed)
        fitted = copy.deepcopy(model.state_dict())
        for cap in (float(x) for x in args.caps.split(",") if x):
            model.load_state_dict(fitted)
            if cap < 1:
                settle_new_classes(model, replay_calib.stamps, new, claim_max=cap)
            t = top(predict(model, test.stamps)[0])
            print(f"k={k:<3} cap {cap:<6}: recall {np.mean(t[strong] == new[0]):.3f}, ordinary accuracy change "
                  f"{(t[bright] == test.labels[bright]).mean() - accuracy_before:+.4f}, ordinary called {fam} "
                  f"{np.mean(t[ordinary] == new[0]):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
