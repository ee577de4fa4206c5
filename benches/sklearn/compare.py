"""scikit-learn beside Vigil on the very same feature table and split.

Called by compare.sh, which made the table (`vigil features`), trained and
evaluated Vigil's models on it, and saved their JSON reports in the work
folder. This script fits scikit-learn's IsolationForest and LogisticRegression
on the same first rows, scores the same later rows, and prints both sides.

  python compare.py split WORK TRAIN_SHARE   # writes WORK/test.csv (Vigil's test rows)
  python compare.py compare WORK TRAIN_SHARE SEED
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

NOT_INPUTS = {"transaction_id", "timestamp", "label"}
SINGLE_CALLS = 2000


def load(work: Path):
    table = pd.read_csv(work / "table.csv")
    inputs = [c for c in table.columns if c not in NOT_INPUTS]
    return table, inputs


def split_at(rows: int, share: float) -> int:
    # The same rounding as Vigil's `Table::split`: round half away from zero.
    return int(np.floor(rows * share + 0.5))


def split(work: Path, share: float) -> None:
    table, _ = load(work)
    cut = split_at(len(table), share)
    table.iloc[cut:].to_csv(work / "test.csv", index=False, na_rep="")
    print(f"split: {cut} training rows, {len(table) - cut} test rows", file=sys.stderr)


def vigil_preprocessing(scaler: dict) -> FunctionTransformer:
    """The preprocessing a Vigil model file records, as a scikit-learn step:
    the same columns, in the same order, with the same values."""
    mean, std = np.array(scaler["mean"]), np.array(scaler["std"])
    log = np.array(scaler.get("log") or [False] * len(mean), dtype=bool)
    flagged = list(scaler.get("missing_indicators") or [])

    def transform(x: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        missing = ~np.isfinite(x)
        own = np.where(log[:n], np.sign(x) * np.log1p(np.abs(x)), x)
        own = np.where(missing, 0.0, (own - mean[:n]) / std[:n])
        flags = (missing[:, flagged].astype(np.float64) - mean[n:]) / std[n:]
        return np.hstack([own, flags])

    return FunctionTransformer(transform)


def single_event_us(score_one, rows: np.ndarray) -> float:
    """Mean microseconds of one call that scores one row, as a service would."""
    n = min(SINGLE_CALLS, len(rows))
    started = time.perf_counter()
    for i in range(n):
        score_one(rows[i : i + 1])
    return (time.perf_counter() - started) / n * 1e6


def compare(work: Path, share: float, seed: int) -> None:
    table, inputs = load(work)
    cut = split_at(len(table), share)
    x = table[inputs].to_numpy(dtype=np.float64)
    y = table["label"].to_numpy(dtype=np.int64)
    x_train, y_train, x_test, y_test = x[:cut], y[:cut], x[cut:], y[cut:]
    results = []

    # Logistic regression, L2 with C = 1/alpha and frauds weighted by the copies
    # Vigil replicated them into, twice:
    # - Vigil's default preprocessing, exactly as its model file carries it
    #   (never-negative inputs compressed with sign(x)·ln(1+|x|), missing-value
    #   indicators, standardisation with the file's means and deviations);
    # - the textbook pipeline (mean imputation, then standardisation), beside
    #   Vigil trained with `--plain-inputs`.
    for name, report, textbook in [
        ("logistic regression", "vigil-logistic.json", False),
        ("logistic regression, plain standardisation", "vigil-logistic-plain.json", True),
    ]:
        vigil_lr = json.loads((work / report).read_text())
        body = json.loads(Path(vigil_lr["train"]["out"]).read_text())
        hyper = body["training"]["hyperparameters"]
        steps = [SimpleImputer(strategy="mean"), StandardScaler()] if textbook else [vigil_preprocessing(body["scaler"])]
        lr = make_pipeline(
            *steps,
            LogisticRegression(C=1.0 / hyper["alpha"], class_weight={0: 1, 1: hyper["fraud_copies"]}, max_iter=1000),
        )
        started = time.perf_counter()
        lr.fit(x_train, y_train)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        scores = lr.predict_proba(x_test)[:, 1]
        batch_ns = (time.perf_counter() - started) / len(x_test) * 1e9
        single_us = single_event_us(lambda r: lr.predict_proba(r), x_test)
        results.append((name, vigil_lr, scores, fit_s, batch_ns, single_us, y_test))

    # Isolation forest: the trees and subsample size Vigil's model file records. scikit-learn refuses
    # missing values, so they take the training mean there; Vigil's forest
    # sends them left at every split instead.
    vigil_if = json.loads((work / "vigil-isolation-forest.json").read_text())
    trees = json.loads(Path(vigil_if["train"]["out"]).read_text())["training"]["hyperparameters"]
    forest = make_pipeline(
        SimpleImputer(strategy="mean"),
        IsolationForest(
            n_estimators=trees["n_trees"], max_samples=trees["sample_size"], random_state=seed, n_jobs=1
        ),
    )
    started = time.perf_counter()
    forest.fit(x_train)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = -forest.score_samples(x_test)  # higher = more anomalous, as Vigil's score
    batch_ns = (time.perf_counter() - started) / len(x_test) * 1e9
    single_us = single_event_us(lambda r: forest.score_samples(r), x_test)
    results.append(("isolation forest", vigil_if, scores, fit_s, batch_ns, single_us, y_test))

    import sklearn

    print(
        f"{len(table)} rows ({cut} train, {len(table) - cut} test, {int(y_test.sum())} test frauds), "
        f"{len(inputs)} inputs; scikit-learn {sklearn.__version__}, numpy {np.__version__}"
    )
    print()
    print("| model | side | AUC-ROC | average precision | fit s | batch scoring ns/event | single-event scoring µs/call | single-event rate /s |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, vigil, scores, fit_s, batch_ns, single_us, y_true in results:
        auc, ap = roc_auc_score(y_true, scores), average_precision_score(y_true, scores)
        v_train, v_eval = vigil["train"], vigil["evaluate"]
        v_ns = v_eval["score_ns_per_event"]
        print(
            f"| {name} | Vigil | {v_eval['auc_roc']:.4f} | {v_eval['average_precision']:.4f} | "
            f"{v_train['fit_seconds']:.2f} | {v_ns:.0f} | {v_ns / 1000:.3f} | {1e9 / v_ns:,.0f} |"
        )
        print(
            f"| {name} | scikit-learn | {auc:.4f} | {ap:.4f} | {fit_s:.2f} | {batch_ns:.0f} | "
            f"{single_us:.1f} | {1e6 / single_us:,.0f} |"
        )
        summary[name] = {
            "vigil_ap_minus_sklearn": v_eval["average_precision"] - ap,
            "single_event_speedup": (single_us * 1000) / v_ns,
        }
    print()
    for name, s in summary.items():
        verdict = "at least" if s["vigil_ap_minus_sklearn"] >= 0 else "BELOW"
        print(
            f"{name}: Vigil's average precision is {verdict} scikit-learn's "
            f"({s['vigil_ap_minus_sklearn']:+.4f}); single-event scoring {s['single_event_speedup']:,.0f}x faster"
        )


if __name__ == "__main__":
    command, work, share = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    if command == "split":
        split(work, share)
    else:
        compare(work, share, int(sys.argv[4]))
