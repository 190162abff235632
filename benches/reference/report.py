"""Writes docs/models.md from a run of benches/reference/run.sh.

Usage: report.py WORK_DIR ROWS SEED > docs/models.md
"""

import datetime
import json
import os
import platform
import sys


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def small_data(w, small):
    w("## Small real datasets")
    w("")
    w("With a few hundred rows, a fifth held out is a fifth not learned from. `nurture-trainer`")
    w("therefore (`--refit auto`, up to 10,000 rows) chooses the boosting iterations by 5-fold")
    w("cross-validation on its training split, measures that model on the holdout (the metrics it")
    w("reports and gates on), then fits the published model on every row with the same iterations.")
    w("Here both learners get the same training rows of datasets that ship inside scikit-learn,")
    w("their features renamed to LeadProfile columns (a monotone rescale into each column's range,")
    w("which changes nothing for trees); `nurture-trainer` runs as a command, its ONNX scored by")
    w("ONNX Runtime on the test rows; scikit-learn's `HistGradientBoostingClassifier` keeps its")
    w("defaults (100 iterations: no early stopping below 10,000 rows). Means over stratified shuffle")
    w("splits; the difference is paired (same split), with its standard error. (`benches/reference/small.py`)")
    w("")
    w("| dataset | rows x features, classes | kind, metric | splits (test rows) | nurture-trainer | without refit | scikit-learn | difference (± s.e.) | iterations (median, range) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for name, d in small.items():
        splits = d["splits"]
        ours = [s["nurture_auto"] for s in splits]
        never = [s["nurture_never"] for s in splits]
        theirs = [s["sklearn"] for s in splits]
        diffs = [a - b for a, b in zip(ours, theirs)]
        mean = sum(diffs) / len(diffs)
        se = (sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)) ** 0.5 / len(diffs) ** 0.5
        iterations = sorted(s["iterations"] for s in splits)
        metric = "AUC" if d["kind"] == "churn" else "macro-F1"
        w(
            f"| {name} | {d['rows']} x {d['features']}, {d['classes']} | {d['kind']}, {metric} | "
            f"{len(splits)} ({splits[0]['test_rows']}) | {sum(ours) / len(ours):.4f} | "
            f"{sum(never) / len(never):.4f} | {sum(theirs) / len(theirs):.4f} | {mean:+.4f} (± {se:.4f}) | "
            f"{iterations[len(iterations) // 2]} ({iterations[0]}-{iterations[-1]}) |"
        )
    w("")


def main():
    work, rows, seed = sys.argv[1], sys.argv[2], sys.argv[3]
    nurture = {r["kind"]: r for r in json.load(open(f"{work}/nurture.json"))}
    sklearn = json.load(open(f"{work}/sklearn.json"))
    bayes = json.load(open(f"{work}/bayes.json"))
    wall = float(open(f"{work}/nurture.seconds").read().strip())
    out = []
    w = out.append
    w("# Models: scores against scikit-learn and the Bayes rate")
    w("")
    w("Regenerate with `benches/reference/run.sh` (it installs scikit-learn into")
    w("`.tools/reference-venv`, generates data, trains every kind with")
    w("`nurture-trainer` and with scikit-learn on the same split, and rewrites this file).")
    w("")
    w(f"- Date: {datetime.date.today().isoformat()}")
    w(f"- Machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.release()}")
    w(f"- Data: `nurture-trainer generate --rows {rows} --seed {seed}` (rules in [data.md](data.md));")
    w("  holdout = ids whose FNV-1a 64 hash mod 100 is below 20, the same rows on both sides.")
    w(f"- `nurture-trainer train all` took {wall:.1f} s wall time for all five kinds (release build, one thread).")
    w("")
    w("## Primary metric (higher is better)")
    w("")
    w("| kind | metric | nurture-trainer | scikit-learn | difference | best possible (Bayes) |")
    w("|---|---|---|---|---|---|")
    for kind in ["emotion", "churn", "journey", "channel_timing", "optimization"]:
        ours = nurture[kind]["metrics"]
        metric = "auc" if "auc" in ours else "macro_f1"
        theirs = sklearn[kind]["metrics"][metric]
        best = bayes.get(kind, {}).get("metrics", {}).get(metric)
        best_text = f"{best:.4f}" if best is not None else "-"
        if kind == "emotion":
            best_text += " (upper bound)"
        w(f"| {kind} | {metric} | {ours[metric]:.4f} | {theirs:.4f} | {ours[metric] - theirs:+.4f} | {best_text} |")
    w("")
    w("## All holdout metrics")
    w("")
    w("| kind | metric | nurture-trainer | scikit-learn | Bayes |")
    w("|---|---|---|---|---|")
    for kind in ["emotion", "churn", "journey", "channel_timing", "optimization"]:
        ours = nurture[kind]["metrics"]
        theirs = sklearn[kind]["metrics"]
        for metric in ["auc", "macro_f1", "accuracy", "log_loss"]:
            if metric not in ours:
                continue
            best = bayes.get(kind, {}).get("metrics", {}).get(metric)
            best_text = f"{best:.4f}" if best is not None else "-"
            w(f"| {kind} | {metric} | {ours[metric]:.4f} | {theirs.get(metric, float('nan')):.4f} | {best_text} |")
    w("")
    w("## Models and training time")
    w("")
    w("| kind | nurture-trainer model | ONNX bytes | parity max diff | fit s | scikit-learn fit s |")
    w("|---|---|---|---|---|---|")
    for kind in ["emotion", "churn", "journey", "channel_timing", "optimization"]:
        r = nurture[kind]
        w(
            f"| {kind} | {r['model_summary']} | {r['onnx_bytes']} | {r['parity_max_diff']:.1e} | "
            f"{r['timings']['fit']:.1f} | {sklearn[kind]['seconds']:.1f} |"
        )
    w("")
    small_data(w, json.load(open(f"{work}/small.json")))
    w("## How the models are built")
    w("")
    w("- Tabular kinds: the project's histogram gradient-boosted trees (`trainer/src/gbdt`),")
    w("  with scikit-learn's `HistGradientBoostingClassifier` defaults: learning rate 0.1, at most")
    w("  100 iterations, 31 leaves, 20 rows per leaf, 255 bins, early stopping on a 10% validation")
    w("  share when there are more than 10,000 training rows (patience 10); up to 10,000 rows, the")
    w("  iterations are chosen by 5-fold cross-validation and the published model is refit on every")
    w("  row (see Small real datasets; `--refit never` keeps the training-split model). Exported as one")
    w("  `ai.onnx.ml` `TreeEnsembleRegressor` (raw scores) followed by `Sigmoid` or `Softmax`.")
    w("  Thresholds are training values, so ONNX Runtime routes rows exactly as the trainer does.")
    w("- Emotion: TF-IDF of word 1-2-grams (`[a-z0-9']+` tokens, at most 20,000) and character")
    w("  2-4-grams (characters `[a-z0-9' ]`, at most 30,000), min document frequency 2, smoothed")
    w("  idf, each block L2-normalised, then multinomial logistic regression (L-BFGS, C = 10).")
    w("  The whole pipeline is one ONNX graph: `StringNormalizer` (locale C.UTF-8) → two")
    w("  `com.microsoft` `Tokenizer`s → `TfIdfVectorizer`s → L2 → `MatMul`/`Add` → `Softmax`.")
    w("- Parity: every holdout row is scored by ONNX Runtime and compared with the trainer's own")
    w("  prediction; training fails if any probability differs by more than 1e-4.")
    w("- Churn risk thresholds: the 40th, 65th, 85th and 95th percentiles of the holdout's")
    w("  predicted churn probabilities, so 40% of leads are very_low, 25% low, 20% medium,")
    w("  10% high and 5% critical.")
    w("- Quality gate: `--promote` scores the live version on the same holdout and refuses when")
    w("  the new primary metric is lower by more than `--max-regression` (default 0.01).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
