"""Throughput of the serve loop into the ``null`` exporter, and memory over a long run.

    nice -n 10 python3 benchmarks/throughput.py defaults [--records 1000000]
    nice -n 10 python3 benchmarks/throughput.py grid [--streams 1 16 64] [--steps 200 50 10]

``defaults``: the real daemon (``Service``: generator -> fan-out -> null exporter, metrics
server on) with the shipped ``configs/serve-benchmark.yaml`` (or ``--config``) (the packaged model, the
default 16 streams and sampler), pace fast, until ``--records`` records; prints records/s,
peak RSS and RSS sampled every 100k records (flat = no growth).

``grid``: for each (streams x sampler x steps) the same generator + fan-out + null exporter
path; times ``--turns`` turns after one warm-up turn (one turn = streams x horizon records)
and prints records/s and the predict-step latency. Figures go to stdout as a table (and
with ``--json FILE`` as JSON lines).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_defaults(args) -> dict:
    from prometheus_client import CollectorRegistry

    from flowdiff.config import load_config
    from flowdiff.daemon.preflight import resolve_threads
    from flowdiff.daemon.service import Service, StopFlag

    cfg = load_config(args.config)
    cfg.serve.max_records = args.records
    if args.threads:
        cfg.serve.threads = args.threads
    threads = resolve_threads(cfg.serve.threads)
    cfg.metrics.listen = "127.0.0.1:0"
    if args.model:
        cfg.serve.model = args.model
    registry = CollectorRegistry()
    service = Service(cfg, StopFlag(), registry=registry)
    samples: list[tuple[int, float]] = []
    done = threading.Event()

    def sample_rss():
        next_mark = 0
        while not done.wait(0.5):
            n = service.result.records
            if n >= next_mark:
                samples.append((n, rss_mb()))
                print(f"  {n:>9,d} records  RSS {samples[-1][1]:7.1f} MB", flush=True)
                next_mark = n + args.rss_every

    watcher = threading.Thread(target=sample_rss, daemon=True)
    watcher.start()
    started = time.perf_counter()
    result = service.run()
    seconds = time.perf_counter() - started
    done.set()
    samples.append((result.records, rss_mb()))
    predict = registry.get_sample_value("flowdiff_predict_seconds_sum") / max(1, result.turns)
    after_start = [r for n, r in samples if n > 0]
    row = {"what": f"shipped defaults ({Path(args.config).name})", "streams": cfg.serve.streams,
           "sampler": cfg.serve.sampler.kind, "steps": cfg.serve.sampler.steps,
           "threads": threads, "records": result.records, "seconds": round(seconds, 1),
           "records_per_s": round(result.records / seconds, 1),
           "predict_s_per_turn": round(predict, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
           "rss_first_mb": round(after_start[0], 1) if after_start else None,
           "rss_last_mb": round(samples[-1][1], 1),
           "rss_samples": [(n, round(r, 1)) for n, r in samples]}
    print(f"defaults: {row['records']:,d} records in {row['seconds']} s = "
          f"{row['records_per_s']} records/s (predict {row['predict_s_per_turn']} s/turn); "
          f"RSS first {row['rss_first_mb']} MB, last {row['rss_last_mb']} MB, peak "
          f"{row['peak_rss_mb']} MB")
    return row


def bench_grid(args) -> list[dict]:
    import torch
    from prometheus_client import CollectorRegistry

    from flowdiff.artifact import load_artifact, resolve_model_dir
    from flowdiff.daemon.fanout import Fanout, Sink
    from flowdiff.daemon.generator import StreamGenerator
    from flowdiff.daemon.metrics import DaemonMetrics
    from flowdiff.daemon.pacing import Pacer
    from flowdiff.daemon.preflight import resolve_threads
    from flowdiff.exporters.null import NullConfig, NullExporter
    from flowdiff.model import make_sampler

    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    art = load_artifact(resolve_model_dir(args.model or "default"))
    rows = []
    print(f"{'streams':>7} {'sampler':>11} {'steps':>5} {'records/s':>10} "
          f"{'s/turn':>8} {'predict s':>9} {'rec/turn':>8}", flush=True)
    for streams in args.streams:
        for kind in args.samplers:
            for steps in args.steps:
                gen = StreamGenerator(art.model, art.codec, make_sampler(kind, steps=steps),
                                      context=art.context, horizon=art.horizon,
                                      streams=streams, seed=0)
                gen.start_unconditional(make_sampler("ddim", steps=10), start_ts=time.time())
                null = NullExporter("null", NullConfig())
                fanout = Fanout([Sink(null, "block", 4)], DaemonMetrics(CollectorRegistry()),
                                Pacer("fast", 1.0, 0.0, 0.0)).start()
                cheap = streams * steps * (5 if kind == "guided" else 1) <= 4000
                if cheap:  # warm-up turn; expensive cells time one cold turn only
                    fanout.submit(gen.step().records)
                turns = args.turns if cheap else 1
                predict, started = 0.0, time.perf_counter()
                for _ in range(turns):
                    turn = gen.step()
                    predict += turn.predict_seconds
                    fanout.submit(turn.records)
                fanout.close(timeout=60)
                seconds = time.perf_counter() - started
                records = null.records - (streams * art.horizon if cheap else 0)
                row = {"streams": streams, "sampler": kind, "steps": steps, "turns": turns,
                       "records": records, "seconds": round(seconds, 2),
                       "records_per_s": round(records / seconds, 1),
                       "predict_s_per_turn": round(predict / turns, 3),
                       "threads": threads}
                rows.append(row)
                print(f"{streams:>7} {kind:>11} {steps:>5} {row['records_per_s']:>10.1f} "
                      f"{seconds / turns:>8.2f} {row['predict_s_per_turn']:>9.3f} "
                      f"{streams * art.horizon:>8}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("defaults", "grid"))
    parser.add_argument("--model", help="artifact directory (default: packaged model)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve-benchmark.yaml",
                        help="defaults: the serve config (e.g. one that also writes the "
                             "records to files, to evaluate drift over the same run)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: the "
                        "config's serve.threads; unset, the CPUs this process may use)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rss-every", type=int, default=100_000)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--samplers", nargs="+", default=["guided", "replacement"])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 50, 10])
    parser.add_argument("--turns", type=int, default=3, help="timed turns per grid cell "
                        "(cells costing more than ~4000 network calls x streams time 1 turn)")
    parser.add_argument("--json", metavar="FILE", help="append results as JSON lines")
    args = parser.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rows = [bench_defaults(args)] if args.mode == "defaults" else bench_grid(args)
    if args.json:
        with open(args.json, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
