"""joblib (and so scikit-learn's n_jobs) running on forkjoin workers through the "forkjoin"
joblib backend of forkjoin.integrations.joblib."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed

import forkjoin as fj  # noqa: E402
import forkjoin.integrations.joblib  # noqa: E402, F401  (registers the backend)


def square_with_pid(i: int) -> tuple[int, int]:
    return i * i, os.getpid()


def fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f"bad item {i}")
    return i


def test_parallel_runs_in_order_on_forkjoin_worker_processes() -> None:
    with joblib.parallel_config(backend="forkjoin", n_jobs=2):
        out = Parallel()(delayed(square_with_pid)(i) for i in range(40))
    assert [value for value, _ in out] == [i * i for i in range(40)]
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_options_reach_the_pool_behind_the_backend() -> None:
    with joblib.parallel_config(backend="forkjoin", n_jobs=2, forkjoin_backend="threads"):
        out = Parallel()(delayed(square_with_pid)(i) for i in range(8))
    assert {pid for _, pid in out} == {os.getpid()}


@pytest.mark.parametrize("engine", ["ray", "dask", "spark"])
def test_joblib_runs_on_a_cluster_engine_underneath(engine: str, request) -> None:
    request.getfixturevalue(f"{engine}_cluster")
    with joblib.parallel_config(backend="forkjoin", n_jobs=2, forkjoin_backend=engine):
        out = Parallel()(delayed(square_with_pid)(i) for i in range(12))
    assert [value for value, _ in out] == [i * i for i in range(12)]
    assert os.getpid() not in {pid for _, pid in out}


def test_an_exception_keeps_its_type_and_the_backend_stays_usable() -> None:
    with joblib.parallel_config(backend="forkjoin", n_jobs=2):
        with pytest.raises(ValueError, match="bad item 3") as caught:
            Parallel()(delayed(fail_on)(i, 3) for i in range(10))
        assert isinstance(caught.value, fj.TaskError)
        assert Parallel()(delayed(fail_on)(i, -1) for i in range(5)) == list(range(5))


def test_large_arguments_arrive_intact() -> None:
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: travels in shared memory
    with joblib.parallel_config(backend="forkjoin", n_jobs=2):
        sums = Parallel()(delayed(np.sum)(big[i::4]) for i in range(4))
    assert sums == [float(big[i::4].sum()) for i in range(4)]


def record_pid_then_score(directory: str, estimator: object, X: np.ndarray, y: np.ndarray) -> float:
    Path(directory, str(os.getpid())).touch()
    return float(estimator.score(X, y))  # type: ignore[attr-defined]


def test_grid_search_with_n_jobs_runs_on_forkjoin_and_matches_sequential(tmp_path: Path) -> None:
    from functools import partial

    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=600, n_features=10, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    scoring = partial(record_pid_then_score, str(tmp_path))
    expected = GridSearchCV(LogisticRegression(max_iter=300), grid, cv=3).fit(X, y)
    with joblib.parallel_config(backend="forkjoin"):
        search = GridSearchCV(
            LogisticRegression(max_iter=300), grid, cv=3, scoring=scoring, n_jobs=-1
        ).fit(X, y)
    assert search.best_params_ == expected.best_params_
    assert search.best_score_ == pytest.approx(expected.best_score_)
    scored_in = {int(p.name) for p in tmp_path.iterdir()}
    assert scored_in and os.getpid() not in scored_in  # the fits ran in forkjoin workers


def test_importing_forkjoin_does_not_import_joblib() -> None:
    code = "import sys, forkjoin, forkjoin.integrations; print('joblib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
