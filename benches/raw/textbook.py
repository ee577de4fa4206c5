"""The textbook features of raw card transactions and the Python models on
them, beside Vigil's scores of the same test rows (compare.sh).

  python textbook.py WORK TRAIN_START TEST_START DAYS SEED

WORK holds raw.csv (simulate.py) and Vigil's `vigil evaluate --scores` files
(vigil-*-scores.csv). Training rows are the DAYS days from TRAIN_START, test
rows the DAYS days from TEST_START (dates, UTC); the gap between them lets the
training week's frauds be confirmed before the test week starts.

The textbook features, computed here from the raw columns alone:
- the card's payment count and mean amount over the last 1, 7 and 30 days,
  the payment itself included;
- the terminal's payment count and fraud share over 1, 7 and 30 days of
  payments at least 7 days old (old enough for their outcome to be known);
- weekend and night (before 06:00) flags, and the amount.
"""

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86_400
DELAY_DAYS = 7
WINDOWS = [1, 7, 30]


def _trees_compare():
    path = Path(__file__).resolve().parent.parent / "trees" / "compare.py"
    spec = importlib.util.spec_from_file_location("trees_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def window_counts(group: np.ndarray, t: np.ndarray, value: np.ndarray, lo_offset: int, hi_offset: int):
    """For each row, the number of rows of its group with time in
    (t - lo_offset, t - hi_offset] and the sum of their `value`."""
    order = np.lexsort((t, group))
    g, s, v = group[order], t[order], value[order]
    key = g.astype(np.int64) * (1 << 40) + s
    total = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.searchsorted(key, key - lo_offset, side="right")
    hi = np.searchsorted(key, key - hi_offset, side="right")
    count, summed = np.empty(len(t)), np.empty(len(t))
    count[order] = hi - lo
    summed[order] = total[hi] - total[lo]
    return count, summed


def textbook_features(raw: pd.DataFrame) -> pd.DataFrame:
    stamp = pd.to_datetime(raw["timestamp"], utc=True, format="ISO8601")
    t = (stamp.astype("int64") // 1_000_000_000).to_numpy()
    amount = raw["amount"].to_numpy(dtype=np.float64)
    fraud = raw["is_fraud"].to_numpy(dtype=np.float64)
    card = pd.factorize(raw["card_id"])[0]
    terminal = pd.factorize(raw["terminal_id"])[0]
    out = {"amount": amount, "weekend": (stamp.dt.dayofweek >= 5).astype(int).to_numpy(), "night": (stamp.dt.hour < 6).astype(int).to_numpy()}
    for w in WINDOWS:
        # (t - w, t]: the payment itself counts (offset 0 includes its own second).
        count, summed = window_counts(card, t, amount, w * DAY, 0)
        out[f"card_count_{w}d"] = count
        out[f"card_mean_{w}d"] = summed / count
    for w in WINDOWS:
        d = DELAY_DAYS * DAY
        count, frauds = window_counts(terminal, t, fraud, d + w * DAY, d)
        out[f"terminal_count_{w}d_delayed"] = count
        out[f"terminal_risk_{w}d_delayed"] = np.where(count > 0, frauds / np.maximum(count, 1), 0.0)
    return pd.DataFrame(out)


def main() -> None:
    work, train_start, test_start, days, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    import lightgbm as lgb
    import sklearn
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    card_precision = _trees_compare().card_precision
    raw = pd.read_csv(work / "raw.csv", dtype={"amount": str, "fraud_reported_at": str})
    started = time.perf_counter()
    x_all = textbook_features(raw)
    features_s = time.perf_counter() - started
    stamp = pd.to_datetime(raw["timestamp"], utc=True, format="ISO8601")
    lo, mid = pd.Timestamp(train_start, tz="UTC"), pd.Timestamp(test_start, tz="UTC")
    train = ((stamp >= lo) & (stamp < lo + pd.Timedelta(days=days))).to_numpy()
    test = ((stamp >= mid) & (stamp < mid + pd.Timedelta(days=days))).to_numpy()
    y = raw["is_fraud"].to_numpy(dtype=np.int64)
    x_train, y_train, x_test, y_test = x_all[train].to_numpy(), y[train], x_all[test].to_numpy(), y[test]
    cards = raw.loc[test, "card_id"].reset_index(drop=True)
    days_of = stamp[test].dt.date.reset_index(drop=True)
    test_ids = raw.loc[test, "transaction_id"].to_numpy()

    def figures(scores):
        scores = np.asarray(scores, dtype=np.float64)
        return (
            roc_auc_score(y_test, scores),
            average_precision_score(y_test, scores),
            card_precision(scores, y_test, cards, days_of),
        )

    rows = []

    def fitted(name, make):
        m = make()
        started = time.perf_counter()
        m.fit(x_train, y_train)
        fit_s = time.perf_counter() - started
        scores = m.predict_proba(x_test)[:, 1]
        rows.append((name, *figures(scores), fit_s))

    fitted(f"scikit-learn LogisticRegression {sklearn.__version__}", lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)))
    fitted(
        f"scikit-learn RandomForest {sklearn.__version__} (100 trees, max depth 20)",
        lambda: RandomForestClassifier(n_estimators=100, max_depth=20, n_jobs=2, random_state=seed),
    )
    fitted(
        f"scikit-learn RandomForest {sklearn.__version__} (300 trees, min 5 per leaf)",
        lambda: RandomForestClassifier(n_estimators=300, min_samples_leaf=5, n_jobs=2, random_state=seed),
    )
    fitted(
        f"LightGBM {lgb.__version__} (300 trees, rate 0.05, 31 leaves)",
        lambda: lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, n_jobs=2, random_state=seed, verbose=-1),
    )
    fitted(
        f"XGBoost {xgb.__version__} (300 trees, rate 0.05, depth 6)",
        lambda: xgb.XGBClassifier(n_estimators=300, learning_rate=0.05, max_depth=6, tree_method="hist", n_jobs=2, random_state=seed),
    )

    vigil_rows = []
    for scores_file in sorted(work.glob("vigil-*-scores.csv")):
        name = scores_file.name[len("vigil-") : -len("-scores.csv")]
        v = pd.read_csv(scores_file, dtype={"transaction_id": str}).set_index("transaction_id")
        missing = set(test_ids) - set(v.index)
        assert not missing, f"{scores_file} lacks {len(missing)} of the test rows"
        v = v.loc[test_ids]
        assert (v["label"].to_numpy() == y_test).all(), f"{scores_file}: labels differ from the history's"
        summary = json.loads((work / f"vigil-{name}-train.json").read_text())
        vigil_rows.append((f"Vigil {name} (the pipeline's declared features)", *figures(v["score"].to_numpy()), summary["fit_seconds"]))

    print(
        f"{len(raw)} payments; training {train_start} + {days} days: {int(train.sum())} rows, {int(y_train.sum())} frauds; "
        f"test {test_start} + {days} days: {int(test.sum())} rows, {int(y_test.sum())} frauds; "
        f"textbook features computed in {features_s:.1f} s"
    )
    print()
    print("| model | AUC-ROC | average precision | card precision@100 | fit s |")
    print("|---|---|---|---|---|")
    for name, auc, ap, cp, fit_s in vigil_rows + rows:
        print(f"| {name} | {auc:.4f} | {ap:.4f} | {cp:.4f} | {fit_s:.2f} |")
    best = max(rows, key=lambda r: r[2])
    print()
    print(f"best Python model by test average precision (picked on the test rows, to its advantage): {best[0]}, {best[2]:.4f}")


if __name__ == "__main__":
    main()
