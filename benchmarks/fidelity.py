"""Fidelity benchmark: Diffusion-TS stream vs iid and CTGAN baselines vs real-vs-real.

    nice -n 10 python3 benchmarks/fidelity.py --out /tmp/flowdiff-fidelity

1. Reads ``../shared/data/ugr16/ugr16_day1_train.csv.gz`` (UGR'16, 2016-04-11 00:00-16:00)
   and splits it by time: the last ``--heldout-records`` records are the held-out range
   nobody trains on; everything before is the training part. The real-vs-real reference
   is the same number of records right before the held-out range.
2. Model: trains with ``flowdiff train --config CONFIG`` on the training part (or loads
   ``--model-dir``) and generates ``--records`` records in one stream with
   ``flowdiff generate``. Skipped, with the reason printed, if that fails or
   ``--skip-model`` is given.
3. Baselines on the training part: iid marginals and CTGAN (``--ctgan-epochs`` on the last
   ``--ctgan-train-records`` training records), ``--records`` records each. The CTGAN
   output is kept in ``--work`` under a name holding every setting and reused by a later
   run with the same settings (it takes tens of minutes on CPU).
4. ``flowdiff.eval.evaluate`` of every generator and of the reference against the held-out
   range; prints the side-by-side table and the issue-6 goals for the model's stream,
   and writes the full report (JSON, Markdown, HTML, PNG plots) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ugr16" / "ugr16_day1_train.csv.gz"
MODEL = "diffusion-ts"
log = logging.getLogger("benchmarks.fidelity")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--heldout-records", type=int, default=100_000)
    p.add_argument("--records", type=int, default=200_000, help="records per generator")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "train-ugr16-cpu.yaml",
                   help="training config of the model")
    p.add_argument("--model-dir", type=Path, help="use this trained artifact, skip training")
    p.add_argument("--skip-model", action="store_true", help="baselines and reference only")
    p.add_argument("--generate-steps", type=int, default=10, help="sampler steps")
    p.add_argument("--ctgan-epochs", type=int, default=10)
    p.add_argument("--ctgan-train-records", type=int, default=20_000)
    p.add_argument("--segment-records", type=int, default=50_000, help="drift segments")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/flowdiff-fidelity-work"))
    p.add_argument("--out", type=Path, default=Path("/tmp/flowdiff-fidelity"))
    return p.parse_args(argv)


def split_by_time(table, heldout_records: int):
    """(train, reference, heldout): heldout = the last records by ts, reference = as many
    right before it (inside train), train = everything before heldout."""
    if len(table) < 3 * heldout_records:
        raise SystemExit(f"--heldout-records {heldout_records} too large for {len(table)} "
                         f"records (need 3x)")
    cut = len(table) - heldout_records
    train = table.iloc[:cut].reset_index(drop=True)
    heldout = table.iloc[cut:].reset_index(drop=True)
    reference = table.iloc[cut - heldout_records:cut].reset_index(drop=True)
    return train, reference, heldout


def run_flowdiff(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "flowdiff", *args]
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
    print(done.stdout.strip())


def model_stream(opts, train_path: Path, records: int) -> Path:
    """Train (unless --model-dir) and generate one stream; returns the generated file."""
    model_dir = opts.model_dir
    if model_dir is None:
        model_dir = opts.work / "model"
        run_flowdiff(["train", "--data", str(train_path), "--config", str(opts.config),
                      "--out", str(model_dir)])
    out = opts.work / f"{MODEL}.jsonl"
    run_flowdiff(["generate", "--model", str(model_dir), "--records", str(records),
                  "--seed", str(opts.seed), "--streams", "1", "--steps",
                  str(opts.generate_steps), "--start-ts", "1460390400", "--out", str(out)])
    return out


def read_jsonl(path: Path):
    """``flowdiff generate``'s JSON lines -> canonical table (ingest does not read JSON
    lines yet, and generate's CSV/Parquet output through the file exporter failed when
    this was written). Kept in stream order, not sorted, so the validity check sees whether
    the stream's start times ever go back."""
    import pandas as pd

    from flowdiff import schema

    raw = pd.read_json(path, lines=True, dtype=False)
    for column, to_int in (("srcip", schema.ip_to_int), ("dstip", schema.ip_to_int),
                           ("proto", schema.proto_to_int), ("flags", schema.flags_to_int)):
        if column in raw.columns:
            raw[column] = to_int(raw[column].to_numpy())
    return schema.conform(raw)


def goals(result: dict) -> list[tuple[str, str, bool | None]]:
    """Issue-6 goals for the model's stream: (goal, measured, met)."""
    rows = result["synthetics"]
    if MODEL not in rows:
        return []
    m = rows[MODEL]["headline"]
    ref, iid, ctgan = (rows.get(k, {}).get("headline", {}) for k in
                       ("real-vs-real", "iid", "ctgan"))
    sf = {k: v for k, v in m.items() if k.startswith("emd_sf_") and k != "emd_sf_max"}
    out = [("mean JSD <= 1.2x real-vs-real",
            f"{m['jsd_mean']:.4f} vs 1.2 x {ref['jsd_mean']:.4f}",
            m["jsd_mean"] <= 1.2 * ref["jsd_mean"]),
           ("scale-free EMD <= 0.05 on every numeric field",
            ", ".join(f"{k[7:]} {v:.4f}" for k, v in sf.items()),
            all(v <= 0.05 for v in sf.values())),
           ("validity violations < 0.1%", f"{100 * m['violation_fraction']:.3f}%",
            m["violation_fraction"] < 0.001),
           ("temporal-dependence error <= iid / 3",
            f"{m['dependence_error']:.4f} vs {iid['dependence_error']:.4f} / 3",
            m["dependence_error"] * 3 <= iid["dependence_error"])]
    scores = [b.get("discriminative") for b in (iid, ctgan)]
    if m["discriminative"] is None or None in scores:
        out.append(("discriminative score better than both baselines", "n/a", None))
    else:
        out.append(("discriminative score better than both baselines",
                    f"{m['discriminative']:.3f} vs iid {scores[0]:.3f}, ctgan {scores[1]:.3f}",
                    m["discriminative"] < min(scores)))
    change = rows[MODEL]["drift"]["max_relative_change"]
    out.append(("last segment within 10% of first (max relative change)",
                f"{change:.3f} over {len(rows[MODEL]['drift']['segments'])} segments",
                change <= 0.10))
    return out


def main(argv=None) -> int:
    import torch

    from flowdiff.baselines.ctgan import CtganConfig, sample_ctgan
    from flowdiff.baselines.iid import sample_iid
    from flowdiff.eval import EvalConfig, evaluate, read_table, write_report
    from flowdiff.eval.report import summary_table, to_markdown
    from flowdiff.ingest import write_flows

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opts = parse_args(argv)
    torch.set_num_threads(1)
    opts.work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    table = read_table(opts.data)
    train, reference, heldout = split_by_time(table, opts.heldout_records)
    del table
    train_path = write_flows(train, opts.work / "train.parquet")
    timings["read_split_s"] = time.perf_counter() - started
    span = lambda t: f"{time.strftime('%H:%M:%S', time.gmtime(t['ts'].iloc[0]))}-" \
                     f"{time.strftime('%H:%M:%S', time.gmtime(t['ts'].iloc[-1]))}"
    print(f"train {len(train)} records {span(train)}, reference {len(reference)} "
          f"{span(reference)}, held-out {len(heldout)} {span(heldout)} (UTC clock of the "
          f"trace's local times)")

    synthetics = {}
    notes = {}
    if opts.skip_model:
        notes[MODEL] = "not run: --skip-model"
    else:
        started = time.perf_counter()
        try:
            synthetics[MODEL] = read_jsonl(model_stream(opts, train_path, opts.records))
        except (RuntimeError, OSError, ValueError) as exc:
            notes[MODEL] = f"not run: {exc}"
        timings["model_s"] = time.perf_counter() - started
    started = time.perf_counter()
    synthetics["iid"] = sample_iid(train, opts.records, opts.seed)
    timings["iid_s"] = time.perf_counter() - started
    ctgan_file = opts.work / (f"ctgan-e{opts.ctgan_epochs}-n{opts.ctgan_train_records}-"
                              f"r{opts.records}-h{opts.heldout_records}-s{opts.seed}.parquet")
    started = time.perf_counter()
    if ctgan_file.exists():  # same data split, settings and seed: reuse the earlier run
        synthetics["ctgan"] = read_table(ctgan_file)
        notes["ctgan"] = f"loaded from {ctgan_file} (trained by an earlier run)"
    else:
        synthetics["ctgan"] = sample_ctgan(train, opts.records, CtganConfig(
            epochs=opts.ctgan_epochs, train_records=opts.ctgan_train_records, seed=opts.seed))
        write_flows(synthetics["ctgan"], ctgan_file)
    timings["ctgan_s"] = time.perf_counter() - started
    synthetics["real-vs-real"] = reference

    started = time.perf_counter()
    result = evaluate(heldout, synthetics, EvalConfig(seed=opts.seed,
                                                      segment_records=opts.segment_records))
    files = write_report(result, heldout, synthetics, opts.out)
    timings["evaluate_s"] = time.perf_counter() - started

    print("\n" + to_markdown(summary_table(result)))
    for name, note in notes.items():
        print(f"\n{name}: {note}")
    rows = goals(result)
    if rows:
        print("\n| goal (diffusion-ts stream) | measured | met |\n|---|---|---|")
        for goal, measured, met in rows:
            print(f"| {goal} | {measured} | {'n/a' if met is None else 'yes' if met else 'no'} |")
    print("\ntimings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"report: {files['markdown']} (plots: "
          f"{', '.join(Path(v).name for k, v in files.items() if k.startswith('plot:'))})")
    (opts.out / "benchmark.json").write_text(json.dumps(
        {"timings": timings, "notes": notes, "goals": rows, "args": {
            k: str(v) for k, v in vars(opts).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
