#!/usr/bin/env python3
"""Medians (and p90) of the namespace runtime's per-step debug timings.

    PRISM_BENCH_LOG=prism_core=debug,prism_sys::launch=debug \
        target/release/prism-bench --only prism 2>steps.log
    bench/steps.py steps.log

Reads the `start timing`, `launch timing` and `teardown timing` events (their `*_us` fields)
and prints one line per field, skipping the first three samples of each (warm-up).
"""
import re
import statistics
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EVENT = re.compile(r"\b(start|launch|teardown) timing\b")
FIELD = re.compile(r"\b(\w+)_us=(\d+)")


def main(path: str) -> None:
    rows: dict[tuple[str, str], list[int]] = {}
    with open(path, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line)
            event = EVENT.search(line)
            if not event:
                continue
            for name, value in FIELD.findall(line):
                rows.setdefault((event.group(1), name), []).append(int(value))
    if not rows:
        sys.exit(f"{path}: no timing events (set PRISM_BENCH_LOG, see the docstring)")
    for (event, name), values in rows.items():
        values = values[3:] if len(values) > 10 else values
        values.sort()
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(
            f"{event:9} {name:8} p50 {statistics.median(values) / 1000:6.3f} ms"
            f"  p90 {p90 / 1000:6.3f} ms  n={len(values)}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
