"""nurture-trainer against scikit-learn's HistGradientBoostingClassifier on
small real datasets that ship inside scikit-learn, renamed to LeadProfile
columns.

Usage: small.py TRAINER WORK_DIR OUT_JSON [SPLITS]

Each dataset's features become LeadProfile columns in order (the flag
pre_approved is skipped). Every column is mapped into its unit's range by a
min-max rescale over the whole dataset: label-free and monotone, so neither
tree learner sees a different problem. For each of SPLITS (default 20)
stratified shuffle splits, both learners get the same training rows:
nurture-trainer through its CLI (`--refit auto`, its default, and `--refit
never`), its ONNX scored by ONNX Runtime on the test rows; scikit-learn with
its defaults. Binary datasets are scored by AUC (as churn), multi-class ones
by macro-F1 (as journey stage).
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit

# LeadProfile's columns and their units' ranges (models/src/features.rs),
# without the flag pre_approved.
COLUMNS = [
    ("days_since_first_contact", "nonneg"),
    ("days_since_last_contact", "nonneg"),
    ("days_since_last_reply", "nonneg"),
    ("email_open_rate", "unit"),
    ("email_click_rate", "unit"),
    ("sms_reply_rate", "unit"),
    ("call_answer_rate", "unit"),
    ("video_join_rate", "unit"),
    ("messages_sent_30d", "nonneg"),
    ("messages_received_30d", "nonneg"),
    ("avg_response_hours", "nonneg"),
    ("sentiment_score", "polarity"),
    ("complaints_90d", "nonneg"),
    ("website_visits_30d", "nonneg"),
    ("listings_viewed_30d", "nonneg"),
    ("saved_searches", "nonneg"),
    ("showings_attended", "nonneg"),
    ("mortgage_calculator_uses_30d", "nonneg"),
    ("budget_k_usd", "nonneg"),
]
STAGES = ["initial_interest", "active_search", "property_evaluation", "decision_making", "ready_to_buy"]

DATASETS = {
    # name: (loader, test share); the test share keeps 50 or more test rows.
    "breast_cancer": (load_breast_cancer, 0.25),
    "wine": (load_wine, 0.3),
    "iris": (load_iris, 0.34),
}


def lead_columns(x):
    """The first 19 features, rescaled into LeadProfile units."""
    x = x[:, : len(COLUMNS)]
    low, high = x.min(axis=0), x.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    unit = (x - low) / span
    out = np.empty_like(unit)
    for j in range(x.shape[1]):
        kind = COLUMNS[j][1]
        out[:, j] = {"unit": unit[:, j], "polarity": 2 * unit[:, j] - 1, "nonneg": 100 * unit[:, j]}[kind]
    # Round to float32 as the trainer stores them, so both see the same values.
    return out.astype(np.float32)


def write_csv(path, x, y, kind, rows):
    names = [c for c, _ in COLUMNS[: x.shape[1]]]
    label = "churned" if kind == "churn" else "stage"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["lead_id", *names, label])
        for i in rows:
            target = str(int(y[i])) if kind == "churn" else STAGES[int(y[i])]
            out.writerow([f"row-{i}", *(repr(float(v)) for v in x[i]), target])


def train_nurture(trainer, kind, data, out_dir, refit):
    report = subprocess.run(
        [trainer, "--json", "train", kind, "--data", data, "--out-dir", out_dir, "--refit", refit],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(report.stdout)[0]


def score_onnx(path, features, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"features": x[:, : len(features)]})[0]


def metric(kind, y, proba, classes):
    if kind == "churn":
        return roc_auc_score(y, proba[:, 1])
    predicted = np.argmax(proba[:, : len(classes)], axis=1)
    return f1_score(y, predicted, average="macro")


def run(trainer, work, name, splits):
    loader, test_size = DATASETS[name]
    bunch = loader()
    x, y = lead_columns(bunch.data), bunch.target
    classes = sorted(set(y.tolist()))
    kind = "churn" if len(classes) == 2 else "journey"
    results = {"kind": kind, "rows": len(y), "features": x.shape[1], "classes": len(classes), "splits": []}
    sss = StratifiedShuffleSplit(n_splits=splits, test_size=test_size, random_state=0)
    for index, (train_rows, test_rows) in enumerate(sss.split(x, y)):
        folder = f"{work}/{name}/{index}"
        os.makedirs(folder, exist_ok=True)
        data = f"{folder}/train.csv"
        write_csv(data, x, y, kind, train_rows)
        split = {"train_rows": len(train_rows), "test_rows": len(test_rows)}
        for refit in ["auto", "never"]:
            out_dir = f"{folder}/{refit}"
            report = train_nurture(trainer, kind, data, out_dir, refit)
            proba = score_onnx(f"{out_dir}/{kind}.onnx", report["features"], x[test_rows])
            split[f"nurture_{refit}"] = metric(kind, y[test_rows], proba, classes)
            if refit == "auto":
                split["iterations"] = (report.get("refit") or {}).get("iterations")
        model = HistGradientBoostingClassifier(random_state=0).fit(x[train_rows], y[train_rows])
        split["sklearn"] = metric(kind, y[test_rows], model.predict_proba(x[test_rows]), classes)
        results["splits"].append(split)
        print(
            f"{name} split {index}: nurture {split['nurture_auto']:.4f} "
            f"(no refit {split['nurture_never']:.4f}), scikit-learn {split['sklearn']:.4f}",
            file=sys.stderr,
        )
    return results


def main():
    trainer, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
    splits = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    results = {name: run(trainer, work, name, splits) for name in DATASETS}
    with open(out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
