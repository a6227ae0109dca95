"""Ingest speed and memory on the real UGR'16 day (869,867 rows) and the CAIDA capture.

    nice -n 10 python3 benchmarks/ingest_bench.py [--data ../shared/data] [--repeat 3]

Prints rows/s and peak RSS for ``read_flows`` (whole file, sorted), the streaming
``iter_flow_chunks`` path, ``write_flows`` and pcap -> flows. Targets: >= 200k rows/s and
peak RSS < 2 GB on ugr16_day1_train.csv.gz. ``bench_read`` is importable (the codec
benchmark uses it to time ingest as one stage of the pipeline).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowdiff.ingest import iter_flow_chunks, read_flows, write_flows  # noqa: E402

TARGET_ROWS_PER_S = 200_000
TARGET_RSS_BYTES = 2 * 1024**3


@dataclass
class Figure:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    def line(self) -> str:
        return (f"{self.name:<34} {self.rows:>9,} rows  {self.seconds:7.2f} s  "
                f"{self.rows_per_second:>11,.0f} rows/s")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def bench_read(path: Path, repeat: int = 1) -> Figure:
    """Best of ``repeat`` runs of read_flows (parse, validate, sort)."""
    best = None
    for _ in range(repeat):
        started = time.perf_counter()
        table, _summary = read_flows(path)
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return Figure(f"read_flows {path.name}", len(table), best)


def bench_stream(path: Path) -> Figure:
    started = time.perf_counter()
    rows = sum(len(chunk) for chunk in iter_flow_chunks(path))
    return Figure(f"iter_flow_chunks {path.name}", rows, time.perf_counter() - started)


def bench_write(path: Path, suffix: str) -> Figure:
    table, _ = read_flows(path)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_flows(table, Path(tmp) / f"out{suffix}")
        return Figure(f"write_flows {suffix}", len(table), time.perf_counter() - started)


def bench_pcap(path: Path) -> Figure:
    started = time.perf_counter()
    _, summary = read_flows(path)
    return Figure(f"pcap -> flows {path.name} (packets)", summary.rows_read,
                  time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    day = args.data / "ugr16" / "ugr16_day1_train.csv.gz"
    if not day.exists():
        print(f"missing {day}: nothing to measure")
        return 1
    read = bench_read(day, args.repeat)
    rss = peak_rss_bytes()   # after the full read: the figure the target is about
    figures = [read, bench_stream(day), bench_write(day, ".parquet"),
               bench_write(day, ".csv.gz")]
    pcap = args.data / "caida" / "caida-small-v1.pcap"
    if pcap.exists():
        figures.append(bench_pcap(pcap))
    for figure in figures:
        print(figure.line())
    print(f"peak RSS after read_flows: {rss / 1024**2:,.0f} MiB")
    ok_speed = read.rows_per_second >= TARGET_ROWS_PER_S
    ok_rss = rss < TARGET_RSS_BYTES
    print(f"target >= {TARGET_ROWS_PER_S:,} rows/s: {'met' if ok_speed else 'NOT met'}; "
          f"target RSS < 2 GiB: {'met' if ok_rss else 'NOT met'}")
    return 0 if ok_speed and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
