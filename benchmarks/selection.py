"""Selection policies side by side on the demo teacher and the shifted digits stream.

For every policy: acceptance rate, pseudo-label precision, per-class coverage, and the accuracy
(on the shifted test split) of a student trained only on the accepted labels, with the teacher's
own recipe; plus the per-sample cost of ``select`` at batch 128 with 10 and 1000 classes.
Policies run online, batch by batch in stream order, exactly as the service runs them.

    python benchmarks/selection.py [--out selection-report.json] [--skip-students]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pseudostream.clients.demo import STREAM_SHIFT_SEED, TEST_SHIFT_SEED
from pseudostream.models.calibration import scaled_softmax
from pseudostream.models.card import TeacherCard
from pseudostream.models.demo_teacher import RECIPE, build_demo_teacher
from pseudostream.models.digits import load_digits_splits
from pseudostream.models.shift import DEMO_SEVERITY, apply_shift
from pseudostream.server.config import ViewsConfig
from pseudostream.server.selection import PolicyBatch, make_policy
from pseudostream.server.selection.dist_align import AlignedPolicy, DistributionAlignment
from pseudostream.server.views import AugmentedViews

BATCH = 32  # stream batch size (what the service's batcher cuts under moderate load)
# Online EMA momentum: a half-life of 256 samples, whatever the batch size (METHODS.md).
PER_SAMPLE = 0.5 ** (1 / 256)

POLICIES: dict[str, dict[str, Any]] = {
    "fixed": {"tau": 0.95},
    "flexmatch": {"tau": 0.95, "expected_samples": 1077},
    "freematch": {"momentum_per_sample": PER_SAMPLE},
    "softmatch": {"momentum_per_sample": PER_SAMPLE, "min_weight": 0.0},
    "curriculum": {"window": 512, "stage_samples": 216},
    "dist_align": {"tau": 0.95},  # FixMatch behind distribution alignment
    "debiaspl": {"momentum_per_sample": PER_SAMPLE},
    "adsh": {"window": 512},
    "confident": {},
    "uncertainty": {},
    "multilabel": {"momentum_per_sample": PER_SAMPLE},
}


def build(name: str, classes: int, params: dict[str, Any] | None = None) -> Any:
    params = POLICIES[name] if params is None else params
    if name == "dist_align":
        return AlignedPolicy(make_policy("fixed", classes, params),
                             DistributionAlignment(classes, momentum_per_sample=PER_SAMPLE))
    return make_policy(name, classes, params)


def teacher_outputs(teacher_dir: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scaled logits, softmax probs, sigmoid scores) of the demo teacher, and K=4 TTA views."""
    card = TeacherCard.load(teacher_dir)
    session = ort.InferenceSession(str(teacher_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    run = lambda a: session.run(["logits"], {"input": a})[0] / card.temperature  # noqa: E731
    z = run(x)
    aug = AugmentedViews(ViewsConfig(count=4, max_shift=1, seed=0))
    extra = np.concatenate([scaled_softmax(run(aug.augment(x[i:i + BATCH])), 1.0).reshape(3, -1, z.shape[1])
                            for i in range(0, len(x), BATCH)], axis=1)
    views = np.concatenate([scaled_softmax(z, 1.0)[None], extra])
    return z, views


def run_policy(name: str, z: np.ndarray, views: np.ndarray, ids: list[str]) -> dict[str, np.ndarray]:
    """Decisions over the stream, batch by batch in stream order."""
    policy = build(name, z.shape[1])
    multilabel = name == "multilabel"
    probs = 1 / (1 + np.exp(-z)) if multilabel else scaled_softmax(z, 1.0)
    accept, label, weight = [], [], []
    for i in range(0, len(z), BATCH):
        rows = slice(i, i + BATCH)
        d = policy.select(PolicyBatch(probs=probs[rows], ids=ids[rows], logits=z[rows],
                                      views=views[:, rows] if name == "uncertainty" else None))
        lab = d.label
        if multilabel:  # a sample is used as single-label when exactly one class is positive
            single = d.positive.sum(axis=1) == 1
            lab = np.where(single, d.positive.argmax(axis=1), -1)
            d.accept = d.accept & single
        accept.append(d.accept & (lab >= 0))  # positives only; negative-only labels are not scored
        label.append(lab)
        weight.append(d.weight)
    return {"accept": np.concatenate(accept), "label": np.concatenate(label),
            "weight": np.concatenate(weight)}


def student_accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, seed: int = 0) -> float:
    import torch

    from pseudostream.models.cnn import DigitsCNN
    from pseudostream.models.training import evaluate, train_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = DigitsCNN()
    train_classifier(model, x, y, weight=w, epochs=RECIPE["epochs"], batch_size=RECIPE["batch_size"],
                     lr=RECIPE["lr"], seed=seed)
    return evaluate(model, test_x, test_y)


def overhead_us(name: str, classes: int, batches: int = 100, batch: int = 128) -> float:
    """Microseconds per sample of ``select`` on random calibrated batches."""
    rng = np.random.default_rng(0)
    params = dict(POLICIES[name])
    if name == "flexmatch":
        params["expected_samples"] = batches * batch
    policy = build(name, classes, params)
    z = rng.normal(0, 3, (batches, batch, classes))
    probs = 1 / (1 + np.exp(-z)) if name == "multilabel" else scaled_softmax(z.reshape(-1, classes), 1.0).reshape(z.shape)
    views = np.stack([scaled_softmax((z + rng.normal(0, 0.3, z.shape)).reshape(-1, classes), 1.0).reshape(z.shape)
                      for _ in range(4)], axis=1) if name == "uncertainty" else None
    ids = [[f"s{b}-{i}" for i in range(batch)] for b in range(batches)]
    started = time.perf_counter()
    for b in range(batches):
        policy.select(PolicyBatch(probs=probs[b], ids=ids[b], logits=z[b],
                                  views=None if views is None else views[b]))
    return (time.perf_counter() - started) / (batches * batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("selection-report.json"))
    parser.add_argument("--teacher-dir", type=Path, default=Path(".cache/teachers/digits-cnn"))
    parser.add_argument("--severity", type=int, default=DEMO_SEVERITY, choices=(1, 2, 3))
    parser.add_argument("--skip-students", action="store_true", help="no student training")
    args = parser.parse_args()

    build_demo_teacher(args.teacher_dir)
    splits = load_digits_splits(seed=0)
    stream_x = apply_shift(splits.stream_x, seed=STREAM_SHIFT_SEED, severity=args.severity)
    test_x = apply_shift(splits.test_x, seed=TEST_SHIFT_SEED, severity=args.severity)
    z, views = teacher_outputs(args.teacher_dir, stream_x)
    truth = splits.stream_y
    counts = np.bincount(truth, minlength=10)
    report: dict[str, Any] = {"policies": {}, "stream": {
        "samples": len(truth), "batch": BATCH, "teacher_accuracy": float((z.argmax(1) == truth).mean()),
        "momentum_per_sample": PER_SAMPLE, "severity": args.severity}}
    header = f"{'policy':<12} {'accept':>7} {'prec':>7} {'min cov':>8} {'student':>8} {'us/s 10c':>9} {'us/s 1kc':>9}"
    print(header)
    print("-" * len(header))
    for name in POLICIES:
        d = run_policy(name, z, views, list(splits.stream_ids))
        acc = d["accept"]
        precision = float((d["label"][acc] == truth[acc]).mean()) if acc.any() else 0.0
        coverage = np.bincount(truth[acc & (d["label"] == truth)], minlength=10) / counts
        student = None
        if not args.skip_students and acc.sum() >= 10:
            student = student_accuracy(stream_x[acc], d["label"][acc], d["weight"][acc], test_x, splits.test_y)
        row = {
            "acceptance_rate": float(acc.mean()),
            "precision": precision,
            "per_class_coverage": [round(float(c), 4) for c in coverage],
            "student_accuracy": student,
            "us_per_sample_10_classes": overhead_us(name, 10),
            "us_per_sample_1000_classes": overhead_us(name, 1000),
        }
        report["policies"][name] = row
        print(f"{name:<12} {row['acceptance_rate']:>7.1%} {precision:>7.1%} {coverage.min():>8.1%} "
              f"{'-' if student is None else f'{student:.1%}':>8} "
              f"{row['us_per_sample_10_classes']:>9.2f} {row['us_per_sample_1000_classes']:>9.2f}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"teacher accuracy on the shifted stream: {report['stream']['teacher_accuracy']:.1%}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
