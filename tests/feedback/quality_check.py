"""Reference figures for Nurture's live quality, computed by scikit-learn on
the same (prediction, outcome) pairs the server scored.

    quality_check.py binary PAIRS.csv      # rows: probability,label(0/1)
    quality_check.py classes PAIRS.csv     # rows: label,p0,p1,...,pk-1

Prints one JSON object.
"""

import json
import sys

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score


def ece(p, y, bins=10):
    """Expected calibration error over equal-width bins (the last closed)."""
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() / len(p) * abs(p[mask].mean() - y[mask].mean())
    return total


def main():
    mode, path = sys.argv[1], sys.argv[2]
    data = np.loadtxt(path, delimiter=",", ndmin=2)
    if mode == "binary":
        p, y = data[:, 0], data[:, 1].astype(int)
        out = {
            "auc": roc_auc_score(y, p),
            "log_loss": log_loss(y, p, labels=[0, 1]),
            "brier": brier_score_loss(y, p),
            "ece": ece(p, y),
        }
    else:
        y = data[:, 0].astype(int)
        probabilities = data[:, 1:]
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
        predicted = probabilities.argmax(axis=1)
        out = {
            "accuracy": accuracy_score(y, predicted),
            "macro_f1": f1_score(y, predicted, average="macro"),
            "log_loss": log_loss(y, probabilities, labels=list(range(probabilities.shape[1]))),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
