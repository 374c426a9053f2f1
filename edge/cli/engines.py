"""``astro-edge engines train|evaluate|build|check|finetune``: the engine commands.

This module only declares the arguments; each handler imports its heavy module (torch, onnx,
onnxruntime, tensorrt) when it runs, so ``astro-edge --help`` stays fast and the node never pulls
torch in through the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import engines

DEFAULT_MODEL_DIR = Path(engines.__file__).resolve().parent / "models" / "stampnet-v1"


def _train(args: argparse.Namespace) -> int:
    from engines.training.train import train_command

    return train_command(args)


def _evaluate(args: argparse.Namespace) -> int:
    from engines.training.evaluation import evaluate_command

    return evaluate_command(args)


def _build(args: argparse.Namespace) -> int:
    from engines.build import build_command

    return build_command(args)


def _check(args: argparse.Namespace) -> int:
    from engines.check import check_command

    return check_command(args)


def _finetune(args: argparse.Namespace) -> int:
    from engines.training.finetune import finetune_command

    return finetune_command(args)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``engines`` command group."""
    parser = subparsers.add_parser("engines", help="train, evaluate, build, check and fine-tune neural engines")
    sub = parser.add_subparsers(dest="engines_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train an engine on twin frames and write its folder (needs the train extra)")
    p.add_argument("--out", type=Path, required=True, help="engine folder to write (created)")
    p.add_argument("--name", default="stampnet", help="engine name in the manifest (default: stampnet)")
    p.add_argument("--version", default="1", help="engine version in the manifest (default: 1)")
    p.add_argument("--seed", type=int, default=20261128, help="master seed (default: 20261128)")
    p.add_argument("--design", choices=["shared", "independent"], default="shared",
                   help="ensemble design: one trunk with K heads, or K independent members (default: shared)")
    p.add_argument("--members", type=int, default=4, help="ensemble size K (default: 4)")
    p.add_argument("--widths", default="16,32,64",
                   help="channels of the three conv blocks, comma-separated (default: 16,32,64)")
    p.add_argument("--frame-size", type=int, default=512, help="twin frame side in pixels (default: 512)")
    p.add_argument("--train-frames", type=int, default=240, help="twin frames for training (default: 240)")
    p.add_argument("--calib-frames", type=int, default=80,
                   help="held-out twin frames for temperature, entropy weight and conformal set (default: 80)")
    p.add_argument("--eval-frames", type=int, default=80, help="fresh twin frames for evaluation (default: 80)")
    p.add_argument("--epochs", type=int, default=16, help="training epochs (default: 16)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    p.add_argument("--deformed-oe", type=float, default=0.0, metavar="SHARE",
                   help="share of the outlier-exposure stamps made by deforming twin stars and galaxies "
                        "(engines/training/deform.py; the shipped engine: 0, blob shapes only) (default: 0)")
    p.add_argument("--real-data", type=Path, default=None, metavar="DIR",
                   help="folder holding sep-ntt/ and gmos-cr/ (as tests/data/real does) to classify for "
                        "the model card (default: no real-frame classification)")
    p.add_argument("--no-real", action="store_true",
                   help="skip the real-frame classification even when --real-data is given")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="measure an engine again on its fresh twin set (needs the twin extra)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="engine folder (default: the shipped engine)")
    p.add_argument("--frames", type=int, default=None,
                   help="evaluation frames (default: as many as the engine was evaluated on)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for ONNX Runtime (default: 2)")
    p.add_argument("--write", action="store_true",
                   help="store the figures in the manifest and regenerate the model card (model files unchanged)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("build", help="measure each precision on this device and write a build manifest")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="engine folder (default: the shipped engine)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                   help="auto: the fastest precision that passes the accuracy gate (default: auto)")
    p.add_argument("--batch", type=int, default=512, help="batch size to time and to build for (default: 512)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for ONNX Runtime (default: 1)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write build.json (default: MODEL/build.json)")
    p.set_defaults(func=_build)

    p = sub.add_parser("check", help="parity of every available backend and precision against FP32 on golden stamps")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="engine folder (default: the shipped engine)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for ONNX Runtime (default: 1)")
    p.set_defaults(func=_check)

    p = sub.add_parser("finetune", help="fine-tune an engine on labelled stamps and write a new engine")
    p.add_argument("--from", dest="from_manifest", type=Path, required=True,
                   help="manifest.json (or its folder) of the engine to start from")
    p.add_argument("--labels", type=Path, required=True,
                   help="labelled stamps: .npz with 'stamps' (n, 2, 32, 32) float32 and 'label' (class names)")
    p.add_argument("--out", type=Path, required=True, help="folder of the new engine (created)")
    p.add_argument("--version", default=None, help="version of the new engine (default: old version + '-ft')")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default: 3)")
    p.add_argument("--learning-rate", type=float, default=5e-4, help="peak learning rate (default: 5e-4)")
    p.add_argument("--seed", type=int, default=20261128, help="seed of the split and the updates (default: 20261128)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    p.set_defaults(func=_finetune)
