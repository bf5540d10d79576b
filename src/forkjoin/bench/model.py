"""Scaling models: what measured run times at several worker counts say about a job.

Given the serial time ``T_s`` and the times ``T(p)`` at worker counts ``p``:

- speedup ``S(p) = T_s / T(p)``; efficiency ``E(p) = S(p) / p``;
- Karp-Flatt experimentally determined serial fraction per point (p > 1):
  ``e(p) = (1/S(p) - 1/p) / (1 - 1/p)`` (Karp & Flatt, CACM 33(5), 1990). A value that grows
  with ``p`` means overhead grows with the worker count, not a fixed serial part;
- Amdahl's law ``T(p) = a + b / p``, fitted by least squares to the fastest repeat at each
  count, with serial fraction ``f = a / (a + b)``; its 95% confidence interval comes from a
  bootstrap over the repeats (resampling the measurements at each worker count);
- Gustafson's scaled speedup ``p - f_p (p - 1)``, where ``f_p`` is the serial share of the
  *parallel* run's time: what speedup one gets by growing the problem with the workers.

Pure arithmetic on floats (no numpy): it runs anywhere the engine runs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from statistics import median

# Bootstrap resamples for the Amdahl confidence interval: 400 keeps the interval's ends stable to
# about +-0.01 on typical data, and costs a few milliseconds.
BOOTSTRAP_SAMPLES = 400


@dataclass(frozen=True)
class AmdahlFit:
    """``T(p) = parallel_seconds / p + serial_seconds``; ``serial_fraction`` with a 95% CI."""

    serial_fraction: float
    ci_low: float
    ci_high: float
    serial_seconds: float
    parallel_seconds: float
    r_squared: float

    def predicted_time(self, workers: float) -> float:
        return self.serial_seconds + self.parallel_seconds / workers

    def predicted_speedup(self, workers: float) -> float:
        """Speedup over one worker of this fit (Amdahl's ``1 / (f + (1 - f) / p)``)."""
        f = self.serial_fraction
        return 1.0 / (f + (1.0 - f) / workers)

    def max_speedup(self) -> float:
        return math.inf if self.serial_fraction <= 0 else 1.0 / self.serial_fraction

    def workers_for(self, share_of_max: float = 0.9) -> float:
        """Workers needed to reach ``share_of_max`` of the largest speedup Amdahl allows."""
        f = self.serial_fraction
        if f <= 0:
            return math.inf
        # 1 / (f + (1-f)/p) = s / f  ->  p = s (1 - f) / (f (1 - s))
        return share_of_max * (1 - f) / (f * (1 - share_of_max))


@dataclass(frozen=True)
class ScalingPoint:
    """One worker count: its measured times and what they mean."""

    workers: int
    times: list[float]
    seconds: float  # the median of ``times``
    speedup: float
    efficiency: float
    karp_flatt: float | None  # None at one worker (undefined)
    gustafson: float | None = None


@dataclass
class ScalingModel:
    serial_seconds: float
    points: list[ScalingPoint]
    amdahl: AmdahlFit | None
    predictions: dict[int, float] = field(default_factory=dict)  # workers -> predicted speedup


def _least_squares(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Intercept, slope and R^2 of the straight line through (xs, ys)."""
    n = len(xs)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx > 0 else 0.0
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return intercept, slope, r2


def _fraction(intercept: float, slope: float) -> float:
    """Serial fraction from a fit ``a + b/p``, clipped to [0, 1] (noise can push it out)."""
    a, b = max(intercept, 0.0), max(slope, 0.0)
    return a / (a + b) if a + b > 0 else 0.0


def fit_amdahl(
    times_by_workers: dict[int, list[float]], *, seed: int = 0
) -> AmdahlFit | None:
    """Fit Amdahl's law to run times at two or more worker counts (None with fewer).

    The estimate fits the fastest repeat at each count: on a shared machine noise only ever
    adds time (other processes, page faults), so the minimum is the least disturbed
    measurement (``timeit``'s reasoning). The interval resamples all repeats, so it widens
    with that noise.
    """
    counts = sorted(p for p, ts in times_by_workers.items() if ts)
    if len(counts) < 2:
        return None
    xs = [1.0 / p for p in counts]
    ys = [min(times_by_workers[p]) for p in counts]
    intercept, slope, r2 = _least_squares(xs, ys)
    fraction = _fraction(intercept, slope)
    rng = random.Random(seed)
    samples = []
    for _ in range(BOOTSTRAP_SAMPLES):
        bx: list[float] = []
        by: list[float] = []
        for p in counts:
            ts = times_by_workers[p]
            bx.append(1.0 / p)
            by.append(min(rng.choice(ts) for _ in ts))
        a, b, _ = _least_squares(bx, by)
        samples.append(_fraction(a, b))
    samples.sort()
    low = samples[int(0.025 * (len(samples) - 1))]
    high = samples[int(math.ceil(0.975 * (len(samples) - 1)))]
    return AmdahlFit(
        serial_fraction=fraction,
        ci_low=min(low, fraction),
        ci_high=max(high, fraction),
        serial_seconds=max(intercept, 0.0),
        parallel_seconds=max(slope, 0.0),
        r_squared=r2,
    )


def karp_flatt(speedup: float, workers: int) -> float | None:
    if workers <= 1 or speedup <= 0:
        return None
    return (1.0 / speedup - 1.0 / workers) / (1.0 - 1.0 / workers)


def build_model(
    serial_times: list[float],
    times_by_workers: dict[int, list[float]],
    predict_at: list[int] | None = None,
) -> ScalingModel:
    """Speedup, efficiency, Karp-Flatt and Gustafson per point; the Amdahl fit; predictions."""
    serial = median(serial_times) if serial_times else 0.0
    amdahl = fit_amdahl(times_by_workers)
    points = []
    for p in sorted(times_by_workers):
        ts = times_by_workers[p]
        if not ts:
            continue
        seconds = median(ts)
        speedup = serial / seconds if seconds > 0 and serial > 0 else 0.0
        gustafson = None
        if amdahl is not None and seconds > 0:
            # serial share of the parallel run's own time, then Gustafson's scaled speedup
            share = min(1.0, amdahl.serial_seconds / seconds)
            gustafson = p - share * (p - 1)
        points.append(
            ScalingPoint(
                workers=p,
                times=list(ts),
                seconds=seconds,
                speedup=speedup,
                efficiency=speedup / p if p else 0.0,
                karp_flatt=karp_flatt(speedup, p),
                gustafson=gustafson,
            )
        )
    predictions: dict[int, float] = {}
    if amdahl is not None:
        largest = max(times_by_workers)
        targets = predict_at or [largest * 2, largest * 4, largest * 8, largest * 16]
        one = amdahl.predicted_time(1)
        for p in targets:
            # speedup over the serial baseline when there is one, else over one worker
            reference = serial if serial > 0 else one
            predictions[p] = reference / amdahl.predicted_time(p)
    return ScalingModel(
        serial_seconds=serial, points=points, amdahl=amdahl, predictions=predictions
    )
