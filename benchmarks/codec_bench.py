"""Codec benchmark: ingest rows/s, fit time, encode/decode records/s and peak RSS on a trace.

    nice -n 10 python3 benchmarks/codec_bench.py [--data TRACE]   (default: UGR'16 day 1)

Targets (2-core machine, whole 870k-row UGR'16 day): ingest >= 200k rows/s, encode and
decode >= 200k records/s each, peak RSS < 2 GB. Prints one line per figure; the line
``decode100k~`` decodes 100k noisy vectors (model-output-like, off the vocabulary tokens),
the path that must stay well under a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ugr16" / "ugr16_day1_train.csv.gz"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed(label: str, call, rows=len):
    """Run ``call``, print rows/s (``rows``: a count, or a function of the result)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = call()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    count = rows(result) if callable(rows) else rows
    print(f"{label:<11} {count:>9,d} rows  {seconds:7.2f} s wall ({cpu:6.2f} s cpu)  "
          f"{count / seconds:>10,.0f} rows/s  peak RSS {peak_rss_mb():,.0f} MB  "
          f"load {os.getloadavg()[0]:.1f}")
    return result


def read_trace(path: Path):
    """The project's ingest (flowdiff.ingest.read_flows) -> canonical table."""
    from flowdiff.ingest import read_flows
    table, _summary = read_flows(path)
    return table


def _noisy_model_output(array: np.ndarray, codec, rows: int, seed: int) -> np.ndarray:
    """Encoded records plus Gaussian noise (sigma 0.02): vectors that are not on a token,
    like a model's output, so the off-token decoding (not the exact-hit path) runs."""
    rng = np.random.default_rng(seed)
    picked = array[np.sort(rng.choice(len(array), size=rows, replace=False))]   # (rows, F)
    return picked + rng.normal(0.0, 0.02, picked.shape).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from flowdiff.codec import CodecConfig, FlowCodec

    print(f"data        {args.data}")
    table = timed("ingest", lambda: read_trace(args.data))
    n = len(table)
    codec = timed("fit", lambda: FlowCodec.fit(table, CodecConfig(), seed=args.seed), rows=n)
    print(f"            (F = {codec.width} features)")
    array = timed("encode", lambda: codec.encode(table))
    result = timed("decode", lambda: codec.decode(array, start_ts=float(table["ts"].iloc[0])),
                   rows=lambda r: len(r.table))
    noisy = _noisy_model_output(array, codec, rows=min(n, 100_000), seed=args.seed)
    timed("decode100k~", lambda: codec.decode(noisy, start_ts=0.0), rows=lambda r: len(r.table))
    exact = {f: float(np.mean(table[f].to_numpy() == result.table[f].to_numpy()))
             for f in codec.fields if f not in ("ts", "td")}
    print("exact       " + ", ".join(f"{f} {v:.5f}" for f, v in exact.items()))
    print(f"repairs     {sum(result.repairs.values())} {result.repairs}")
    print(f"peak RSS    {peak_rss_mb():,.0f} MB (whole run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
