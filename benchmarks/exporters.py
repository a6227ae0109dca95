"""Exporter throughput: records/s per exporter against the real targets (tansu for Kafka,
local files per format, pcap files, IPFIX to nfcapd).

    nice -n 10 python3 benchmarks/exporters.py [--records 200000] [--only kafka,files,pcap,ipfix]

Input: UGR'16 records (../shared/data/ugr16/ugr16_sample_20k.csv, tiled with fresh seq
numbers; synthetic records when the file is absent), submitted in batches of ``--batch``
records as the fan-out would. Targets on the 2-core machine: Kafka >= 10,000 records/s,
files >= 50,000 records/s, pcap >= 20,000 packets/s. One line per figure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # realtools: starting tansu / nfcapd, test records

from realtools import Nfcapd, Tansu, synthetic_records, ugr16_records  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "ugr16" / "ugr16_sample_20k.csv"


def records(n: int) -> pd.DataFrame:
    base = ugr16_records(SAMPLE, 20_000) if SAMPLE.exists() else synthetic_records(20_000, seed=0)
    reps = -(-n // len(base))
    table = pd.concat([base] * reps, ignore_index=True).iloc[:n].copy()
    table["stream_id"] = (np.arange(n) % 16).astype(np.int32)
    table["seq"] = np.arange(n) // 16
    return table


def run(label: str, exporter, table: pd.DataFrame, batch: int, extra=None) -> float:
    start = time.perf_counter()
    for lo in range(0, len(table), batch):
        exporter.submit(table.iloc[lo:lo + batch])
    exporter.close()
    seconds = time.perf_counter() - start
    rate = len(table) / seconds
    note = f"  {extra(exporter, seconds)}" if extra else ""
    print(f"{label:<22} {len(table):>9,d} records {seconds:7.2f} s {rate:>11,.0f} records/s{note}",
          flush=True)
    return rate


def bench_kafka(table, batch, workdir):
    from flowdiff.exporters.kafka import CONFIG, EXPORTER

    broker = Tansu().start()
    try:
        for compression in ("gzip", "lz4", "zstd", "none"):
            exporter = EXPORTER("kafka", CONFIG(bootstrap_servers=broker.bootstrap,
                                                topic=f"bench-{compression}", linger_ms=20,
                                                compression_type=compression))
            exporter.submit(table.iloc[:100])  # untimed: connect, create the topic
            run(f"kafka ({compression})", exporter, table, batch,
                lambda e, s: f"errors {e.errors}")
    finally:
        broker.stop()


def bench_files(table, batch, workdir):
    from flowdiff.exporters.files import CONFIG, EXPORTER

    for fmt, gz in (("csv", False), ("csv", True), ("ugr16", False), ("jsonl", False),
                    ("jsonl", True), ("parquet", False)):
        out = workdir / f"{fmt}-{gz}"
        exporter = EXPORTER("file", CONFIG(directory=str(out), format=fmt, gzip=gz,
                                           rotate_records=100_000, rotate_seconds=None))
        run(f"file {fmt}{'.gz' if gz else ''}", exporter, table, batch,
            lambda e, s: f"{len(e.completed)} files, "
                         f"{sum(p.stat().st_size for p in e.completed) / 1e6:,.1f} MB")
        shutil.rmtree(out)


def bench_pcap(table, batch, workdir):
    from flowdiff.exporters.packets import CONFIG, EXPORTER

    exporter = EXPORTER("pcap", CONFIG(directory=str(workdir / "pcap"), rotate_packets=1_000_000,
                                       rotate_seconds=None))
    run("pcap", exporter, table, batch,
        lambda e, s: f"{e.stats.packets:,d} packets {e.stats.packets / s:,.0f} packets/s "
                     f"(skipped {e.stats.skipped}, adjusted {e.stats.adjusted})")
    shutil.rmtree(workdir / "pcap")


def bench_ipfix(table, batch, workdir):
    from flowdiff.exporters.netflow import CONFIG, EXPORTER

    for pps in (2000.0, None):
        collector = Nfcapd(workdir / f"nfcapd-{pps}").start()
        try:
            exporter = EXPORTER("ipfix", CONFIG(collector=f"127.0.0.1:{collector.port}",
                                                packets_per_second=pps))
            run(f"ipfix ({'unpaced' if pps is None else f'{pps:.0f} pkt/s'})", exporter, table,
                batch, lambda e, s: f"{e.packets_sent:,d} datagrams")
            received = len(collector.stop_and_read())
            print(f"{'':<22} nfcapd stored {received:,d} of {len(table):,d} records "
                  f"({100 * (1 - received / len(table)):.2f}% lost)", flush=True)
        finally:
            collector.stop()


BENCHES = {"kafka": bench_kafka, "files": bench_files, "pcap": bench_pcap, "ipfix": bench_ipfix}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--kafka-records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=2000, help="records per submit")
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    table = records(args.records)
    with tempfile.TemporaryDirectory(prefix="flowdiff-bench-") as tmp:
        for name in args.only.split(","):
            data = table.iloc[:args.kafka_records] if name == "kafka" else table
            BENCHES[name](data, args.batch, Path(tmp))


if __name__ == "__main__":
    main()
