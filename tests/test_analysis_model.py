"""forkjoin.bench's arithmetic on known inputs: the Amdahl fit, Karp-Flatt, the phase breakdown
of synthetic event records, and the advice it leads to. No processes: fast and exact."""

from __future__ import annotations

import random

import pytest

from forkjoin.bench.advice import advise_breakdown
from forkjoin.bench.breakdown import PHASES, compute_breakdown
from forkjoin.bench.model import build_model, fit_amdahl, karp_flatt
from forkjoin.engine.events import TaskRecord, WorkerRecord


def amdahl_times(f: float, t1: float, counts: list[int]) -> dict[int, list[float]]:
    return {p: [t1 * (f + (1 - f) / p)] * 3 for p in counts}


@pytest.mark.parametrize("f", [0.0, 0.05, 0.22, 0.5, 0.9])
def test_fit_recovers_an_exact_serial_fraction(f: float) -> None:
    fit = fit_amdahl(amdahl_times(f, 10.0, [1, 2, 4, 8]))
    assert fit is not None
    assert fit.serial_fraction == pytest.approx(f, abs=1e-9)
    assert fit.ci_low - 1e-9 <= f <= fit.ci_high + 1e-9
    assert fit.predicted_speedup(4) == pytest.approx(1 / (f + (1 - f) / 4))


def test_fit_is_robust_to_one_sided_timing_noise() -> None:
    # on a shared machine noise only adds time: a few slow repeats must not move the fit
    rng = random.Random(7)
    f, t1 = 0.3, 2.0
    times = {
        p: [t1 * (f + (1 - f) / p) * (1 + abs(rng.gauss(0, 0.02))) for _ in range(5)]
        for p in (1, 2, 4, 8)
    }
    times[4][0] *= 1.5  # one repeat hit by a load spike
    fit = fit_amdahl(times)
    assert fit is not None
    assert abs(fit.serial_fraction - f) < 0.03
    assert fit.ci_low - 0.02 <= f <= fit.ci_high + 0.02
    assert fit.ci_low < fit.ci_high  # the noise shows in the interval


def test_fit_needs_two_worker_counts() -> None:
    assert fit_amdahl({4: [1.0, 1.1]}) is None


def test_karp_flatt_matches_its_definition() -> None:
    # speedup 3 on 4 workers: e = (1/3 - 1/4) / (1 - 1/4) = 1/9
    assert karp_flatt(3.0, 4) == pytest.approx(1 / 9)
    assert karp_flatt(2.0, 1) is None
    # for an exact Amdahl job, Karp-Flatt gives the serial fraction at every count
    model = build_model([10.0], amdahl_times(0.2, 10.0, [2, 4, 8]))
    for point in model.points:
        assert point.karp_flatt == pytest.approx(0.2)
        assert point.efficiency == pytest.approx(point.speedup / point.workers)
    assert model.predictions[16] == pytest.approx(1 / (0.2 + 0.8 / 16))
    # Gustafson: serial share of the parallel run's time s, speedup p - s (p - 1)
    p8 = model.points[-1]
    share = 2.0 / p8.seconds
    assert p8.gustafson == pytest.approx(8 - share * 7)


def record(task_id, worker, submit, start, end, merge, items=10, status=0, sent=0):
    return TaskRecord(task_id, worker, 0, items, submit, start, end, merge, sent, 0, status)


def test_breakdown_assigns_each_instant_once_by_priority() -> None:
    # two lanes over [0, 10]
    records = [
        record(1, 0, 0.0, 1.0, 4.0, 5.0),  # lane 0: queue 0-1, compute 1-4, transfer 4-5
        record(2, 0, 3.0, 5.0, 7.0, 7.5),  # lane 0: queue 4-5 hidden by transfer? no: queue wins
        record(3, 1, 0.0, 2.0, 8.0, 9.0),  # lane 1: queue 0-2, compute 2-8, transfer 8-9
    ]
    workers = [WorkerRecord(0.5, "start", 0, 100, 0.5, 0)]  # worker 0 started over [0, 0.5]
    brk = compute_breakdown(records, workers, workers=2, t0=0.0, t1=10.0, last_merge=9.0,
                            serialisation_seconds_per_item=0.0)  # fmt: skip
    lane0, lane1 = brk.lane_phases
    assert lane0["compute"] == pytest.approx(3.0 + 2.0)
    assert lane0["startup"] == pytest.approx(0.5)
    assert lane0["queue_wait"] == pytest.approx(0.5 + 1.0)  # 0.5-1 and 4-5
    assert lane0["transfer"] == pytest.approx(0.5)  # 7-7.5
    assert lane0["merge"] == pytest.approx(1.0)  # 9-10
    assert lane0["idle"] == pytest.approx(1.5)  # 7.5-9
    assert lane1["compute"] == pytest.approx(6.0)
    assert lane1["queue_wait"] == pytest.approx(2.0)
    assert lane1["transfer"] == pytest.approx(1.0)
    assert lane1["merge"] == pytest.approx(1.0)
    assert lane1["idle"] == pytest.approx(0.0)
    assert brk.total == pytest.approx(10.0)
    assert brk.phases["compute"] == pytest.approx((5.0 + 6.0) / 2)
    assert set(brk.phases) == set(PHASES)


def test_breakdown_carves_serialisation_from_waiting_and_packs_replacement_workers() -> None:
    # worker 0 dies at 5; its replacement (id 2) starts at 5.5 and takes its lane
    records = [
        record(1, 0, 0.0, 0.0, 5.0, 5.0, status=1),
        record(2, 1, 0.0, 0.0, 10.0, 10.0),
        record(3, 2, 5.0, 6.0, 10.0, 10.0),
    ]
    workers = [
        WorkerRecord(5.2, "exit", 0, 100, -9.0, 0),
        WorkerRecord(6.0, "start", 2, 102, 0.5, 0),
    ]
    brk = compute_breakdown(records, workers, workers=2, t0=0.0, t1=10.0,
                            serialisation_seconds_per_item=0.01)  # fmt: skip
    assert brk.lanes == 2
    assert brk.failed_tasks == 1
    lane_of = {span.worker: span.lane for span in brk.spans}
    assert lane_of[0] == lane_of[2] != lane_of[1]
    lane = brk.lane_phases[lane_of[0]]
    # 30 items at 10 ms each = 0.3 s of pickling, taken from that lane's waiting time
    assert lane["serialisation"] == pytest.approx(0.3)
    assert lane["compute"] == pytest.approx(9.0)
    assert brk.total == pytest.approx(10.0)
    assert any("failed" in line for line in advise_breakdown(brk))


def test_advice_on_tiny_chunks_names_a_chunksize() -> None:
    # 2000 tasks of 10 items, each computing 0.1 ms in a 0.6 ms round trip: overhead dominates
    records = [
        record(i, i % 2, i * 0.001, i * 0.001 + 0.0002, i * 0.001 + 0.0003, i * 0.001 + 0.0006)
        for i in range(2000)
    ]
    brk = compute_breakdown(records, [], workers=2, serialisation_seconds_per_item=0.0)
    advice = " ".join(advise_breakdown(brk))
    assert "chunksize>=" in advice
    wanted = int(advice.split("chunksize>=")[1].split()[0])
    assert wanted == 2000  # 20 ms / (0.1 ms / 10 items)
