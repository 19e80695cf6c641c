"""The medians the benchmarks share: a timed call, and epochs after the first."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of `repeats` calls of fn, after `warmup` untimed calls (first-call allocations, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def median_after_first(values: list[float]) -> float:
    """The median over the epochs after the first (which carries start-up costs), or of all of them when there is one."""
    return statistics.median(values[1:] if len(values) > 1 else values)
