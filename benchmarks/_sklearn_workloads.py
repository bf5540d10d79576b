"""The scikit-learn workloads of ``bench_sklearn.py``, each run in a fresh interpreter.

    python _sklearn_workloads.py WORKLOAD CONTENDER SIZE CALLS

prints one JSON line: the seconds of each call (the first includes starting the workers and
importing scikit-learn in them; the later ones find them warm, as a notebook does) and a
fingerprint of the result, which the benchmark checks against ``n_jobs=1``'s.

Contenders: ``forkjoin`` and ``loky`` run under ``joblib.parallel_config(backend=..., n_jobs=-1)``;
``n_jobs=1`` runs the same estimator serially.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

WORKLOADS = ("gridsearch", "cross_validate", "random_forest")
CONTENDERS = ("forkjoin", "loky", "n_jobs=1")
# Sizes: "full" for the table, "quick" for a smoke test that only checks the plumbing.
SIZES = ("full", "quick")


def _digits(size: str) -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X[:300], y[:300]) if size == "quick" else (X, y)


def gridsearch(size: str, n_jobs: int) -> Any:
    """The issue's case: an SVC's grid on load_digits (5-fold CV, 45 fits when full)."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = _digits(size)
    grid = {"C": [1, 10, 100], "gamma": [1e-3, 1e-4, "scale"]}
    if size == "quick":
        grid = {"C": [1, 10], "gamma": ["scale"]}
    search = GridSearchCV(SVC(), grid, cv=5, n_jobs=n_jobs).fit(X, y)
    scores = [round(float(s), 10) for s in search.cv_results_["mean_test_score"]]
    return {"best_params": {k: str(v) for k, v in search.best_params_.items()}, "scores": scores}


def cross_validate(size: str, n_jobs: int) -> Any:
    """10-fold cross-validation of a gradient-boosted model (each fit ~1 s when full)."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import cross_validate as sk_cross_validate

    X, y = _digits(size)
    model = GradientBoostingClassifier(n_estimators=5 if size == "quick" else 20, random_state=0)
    result = sk_cross_validate(model, X, y, cv=10 if size == "full" else 3, n_jobs=n_jobs)
    return [round(float(s), 10) for s in result["test_score"]]


def random_forest(size: str, n_jobs: int) -> Any:
    """``RandomForestClassifier(n_jobs=-1)``: fit, then predict_proba (its own Parallel calls)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    rows = 2_000 if size == "quick" else 20_000
    X, y = make_classification(n_samples=rows, n_features=40, n_informative=20, random_state=0)
    trees = 20 if size == "quick" else 200
    model = RandomForestClassifier(n_estimators=trees, n_jobs=n_jobs, random_state=0).fit(X, y)
    proba = model.predict_proba(X)
    return {"proba_sum": round(float(proba[:, 1].sum()), 6), "argmax": int(proba.argmax(1).sum())}


def run(workload: str, contender: str, size: str, calls: int) -> dict[str, Any]:
    import joblib

    fn: Callable[[str, int], Any] = globals()[workload]
    seconds, results = [], []
    for _ in range(calls):
        start = time.perf_counter()
        if contender == "n_jobs=1":
            value = fn(size, 1)
        else:
            if contender == "forkjoin":
                import forkjoin.integrations.joblib  # noqa: F401 - registers the backend
            with joblib.parallel_config(backend=contender, n_jobs=-1):
                value = fn(size, -1)
        seconds.append(time.perf_counter() - start)
        results.append(value)
    if any(value != results[0] for value in results):
        raise AssertionError(f"{contender} gave different results from one call to the next")
    return {"seconds": seconds, "result": results[0]}


if __name__ == "__main__":
    workload, contender, size, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if workload not in WORKLOADS or contender not in CONTENDERS or size not in SIZES:
        raise SystemExit(f"usage: {__doc__.splitlines()[2].strip()}")
    print(json.dumps(run(workload, contender, size, calls)))
