"""Trains scikit-learn reference models on the same splits as nurture-trainer.

Usage: compare.py DATA_DIR OUT_JSON

Tabular kinds: HistGradientBoostingClassifier with scikit-learn's defaults
(the defaults nurture-trainer's booster copies). Emotion: word 1-2-gram and
character 2-4-gram TF-IDF (the same token rules as the ONNX graph), each
L2-normalised, then LogisticRegression(C=10). The holdout is the same:
FNV-1a 64 of lead_id, modulo 100, below 20.
"""

import csv
import json
import re
import sys
import time

import numpy as np
from scipy.sparse import hstack
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

KINDS = {
    "emotion": "emotion",
    "churn": "churned",
    "journey": "stage",
    "channel_timing": "responded",
    "optimization": "converted",
}
MASK = (1 << 64) - 1


def is_holdout(lead_id: str) -> bool:
    h = 0xCBF29CE484222325
    for byte in lead_id.encode():
        h ^= byte
        h = (h * 0x100000001B3) & MASK
    return h % 100 < 20


def char_text(text: str) -> str:
    return "".join(c for c in text.lower() if re.match(r"[a-z0-9' ]", c))


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def score(kind, y_true, proba, classes):
    predicted = [classes[i] for i in np.argmax(proba, axis=1)]
    metrics = {
        "accuracy": accuracy_score(y_true, predicted),
        "log_loss": log_loss(y_true, proba, labels=classes),
    }
    if len(classes) == 2:
        metrics["auc"] = roc_auc_score(y_true, proba[:, 1])
    else:
        metrics["macro_f1"] = f1_score(y_true, predicted, average="macro")
    return metrics


def main():
    data_dir, out = sys.argv[1], sys.argv[2]
    results = {}
    for kind, label in KINDS.items():
        header, rows = load(f"{data_dir}/{kind}.csv")
        train = [r for r in rows if not is_holdout(r[0])]
        test = [r for r in rows if is_holdout(r[0])]
        y_train = [r[-1] for r in train]
        y_test = [r[-1] for r in test]
        started = time.perf_counter()
        if kind == "emotion":
            words = TfidfVectorizer(
                lowercase=True, token_pattern=r"[a-z0-9']+", ngram_range=(1, 2), min_df=2, max_features=20000
            )
            chars = TfidfVectorizer(
                analyzer="char", preprocessor=char_text, ngram_range=(2, 4), min_df=2, max_features=30000
            )
            x_train = hstack([words.fit_transform(r[1] for r in train), chars.fit_transform(r[1] for r in train)]).tocsr()
            x_test = hstack([words.transform(r[1] for r in test), chars.transform(r[1] for r in test)]).tocsr()
            model = LogisticRegression(C=10.0, max_iter=1000)
        else:
            x_train = np.array([[float(v) for v in r[1:-1]] for r in train], dtype=np.float32)
            x_test = np.array([[float(v) for v in r[1:-1]] for r in test], dtype=np.float32)
            model = HistGradientBoostingClassifier(random_state=42)
        model.fit(x_train, y_train)
        seconds = time.perf_counter() - started
        classes = list(model.classes_)
        proba = model.predict_proba(x_test)
        results[kind] = {"metrics": score(kind, y_test, proba, classes), "seconds": seconds}
        print(f"{kind}: {results[kind]}", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
