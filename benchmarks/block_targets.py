"""Experiment (session 13, issue 11): block targets applied in decoding, on a cached rollout.

    nice -n 10 python benchmarks/calibration_ablation.py --model flowdiff/default_model \
        --data ../shared/data/ugr16/ugr16_day1_train.csv.gz --records 100000 --streams 1 \
        --variants all --cache K.npz --out abl                 # the rollout and its baseline row
    nice -n 10 python benchmarks/block_targets.py --cache K.npz --model flowdiff/default_model \
        --data ../shared/data/ugr16/ugr16_day1_train.csv.gz --parts numbers reuse joint side \
        skeleton --numbers exact --newfix --exact-lag --out T6.parquet   # docs/model.md row T6

The design this experiment chose (row T7: skeleton classes, 7 quantiles per number, ports
copied at their exact lag) is in the daemon since session 14 as ``flowdiff.codec.block_targets``
(fitted by ``flowdiff calibrate``; ``calibration_ablation.py --variants blocks`` decodes a
rollout with it). This script keeps the variants of the experiment: a measured answer to
"what if every 25-record block of the stream had the block-level statistics of a real
block?" (docs/model.md, "Block targets in
decoding (session 13)"). The training records' consecutive 25-record blocks form a bank;
stream i walks it in order from a place drawn from (seed + i, turn // 50), as the model's
block conditioning does; in each block the decoder keeps the model's preferences but
gives the block the real block's make-up:

* ``numbers`` (ts, td, pkt, byt): the calibrated values' ranks within the block are mapped
  onto the real block's distribution: its normal-score mean and std (``--numbers normal``),
  7 of its quantiles (``knots``: min, 10, 25, 50, 75, 90 %, max) or its 25 sorted training
  ranks (``exact``);
* ``reuse``: the arg-max codes (address reuse codes, tos, label) by an assignment with the
  real block's class counts, maximising the model's calibrated scores;
* ``patterns`` / ``proto``: the flag masks / protocol tokens, the same way, each alone;
* ``joint``: protocol and flag mask as one class (pairs counted in the real block), so a
  UDP record does not get a TCP mask;
* ``side`` (with ``joint``): also which side's port is below 1024; the port tokens are then
  drawn from the model's kernel posterior on that side;
* ``quad``: srcip, dstip, srcport and dstport reuse codes as one class; ports are then
  copied from k records back after decoding (``--newfix``: a 'new' ephemeral port already
  among the last 16 is redrawn; ``--no-port-runs``: independent port draws);
* no parts: the rollout's plain calibration (the baseline of the decoding time printed);
* ``skeleton`` (with ``joint side``): the record's whole discrete make-up as one class
  (protocol, flag mask, port sides, the four reuse codes), ports copied as in ``quad``.

The rollout's calibration is fitted as ``calibration_ablation.py`` fits it (cached next to
the rollout as ``CACHE.cal.pkl``). One stream only.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

BLOCK = 25          # records per block
WALK_TURNS = 50     # turns a stream follows one stretch of the bank
DEPTH = 16          # port reuse codes: same as k records back, k <= DEPTH
BIG = 1e6           # stands for -inf in assignment costs
KNOTS = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])   # --numbers knots: block quantiles kept


def port_codes(ports: np.ndarray) -> np.ndarray:
    """(n,) ports -> (n,) smallest k <= DEPTH with ports[i - k] == ports[i], else 0."""
    codes = np.zeros(len(ports), np.int64)
    for k in range(DEPTH, 0, -1):
        codes[k:][ports[k:] == ports[:-k]] = k
    return codes


def assign(scores: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """(L, C) scores, (L,) slot classes (the target's classes, one per record) -> (L,) the
    class of each record, maximising the total score."""
    rows, cols = linear_sum_assignment(-scores[:, slots])
    chosen = np.empty(len(scores), np.int64)
    chosen[rows] = slots[cols]
    return chosen


def lse(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of (n, V), -inf rows give -BIG."""
    top = x.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.maximum(np.log(np.exp(x - top).sum(axis=1) + 1e-300) + top[:, 0], -BIG)


class Bank:
    """Per-block targets of the training records (``reference`` encoded, ``table`` decoded)."""

    def keep_last(self, blocks: int) -> None:
        """Only the latest ``blocks`` blocks (their targets as computed among all records)."""
        for name, value in vars(self).items():
            if isinstance(value, dict):   # field -> (blocks, ...) array or tuple of them
                for key, part in value.items():
                    value[key] = tuple(v[-blocks:] for v in part) if isinstance(part, tuple) else part[-blocks:]
            elif isinstance(value, np.ndarray):
                setattr(self, name, value[-blocks:])
        self.blocks = blocks

    def __init__(self, cal, codec, reference: np.ndarray, table: pd.DataFrame | None):
        n = (len(reference) // BLOCK) * BLOCK
        ref = reference[:n]
        self.blocks = n // BLOCK
        self.normal, self.ranks, self.knots = {}, {}, {}
        for name, (column, _mq, _tq) in cal.numeric.items():
            p = (rankdata(ref[:, column], "average") - 0.5) / n
            z = ndtri(p).reshape(-1, BLOCK)
            self.normal[name] = (z.mean(axis=1), z.std(axis=1))
            self.ranks[name] = np.sort(p.reshape(-1, BLOCK), axis=1)
            self.knots[name] = np.quantile(self.ranks[name], KNOTS, axis=1).T   # (blocks, len(KNOTS))
        self.codes = {name: ref[:, a:b].argmax(axis=1).reshape(-1, BLOCK)
                      for name, (a, b, _bias) in cal.biases.items()}
        (name, (fa, fb, _v, _b)), = cal.patterns.items()
        masks = pattern_scores(ref[:, fa:fb], cal._pattern_bits[name]).argmax(axis=1)
        decoder = codec.transforms["proto"].table.decoder
        a = codec.feature_slices["proto"].start
        protos = decoder.exact.rows(np.ascontiguousarray(ref[:, a:a + decoder.vectors.shape[1]],
                                                         np.float32))
        self.masks, self.protos = masks.reshape(-1, BLOCK), protos.reshape(-1, BLOCK)
        self.pairs = (protos * 1000 + masks).reshape(-1, BLOCK)
        if table is not None:
            below = [(table[c].to_numpy()[:n] < 1024).astype(np.int64) for c in ("srcport", "dstport")]
            self.sides = (((protos * 1000 + masks) * 2 + below[0]) * 2 + below[1]).reshape(-1, BLOCK)
            sp, dp = (port_codes(table[c].to_numpy()[:n]) for c in ("srcport", "dstport"))
            sc, dc = (ref[:, cal.biases[f][0]:cal.biases[f][1]].argmax(axis=1) for f in ("srcip", "dstip"))
            self.quads = (((sc * 64 + dc) * 64 + sp) * 64 + dp).reshape(-1, BLOCK)
            self.skeletons = np.stack([self.sides.reshape(-1), self.quads.reshape(-1)], axis=1
                                      ).reshape(-1, BLOCK, 2)   # (blocks, BLOCK, 2)


def pattern_scores(bits: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """flowdiff's flag-mask scores (imported late: main puts the repository on the path)."""
    from flowdiff.codec.calibration import pattern_scores as scores
    return scores(bits, patterns)


def block_calibration(base, codec, bank: Bank, horizon: int, seed: int, parts: set,
                      numbers: str, recondition: bool = False, in_order: bool = False):
    """An OutputCalibration whose ``apply`` also imposes the bank's block targets (``recondition``:
    numbers only on ts and pkt, bytes and duration mapped again within pkt's new bins)."""
    from flowdiff.codec.calibration import GRID, OutputCalibration, quantile_map

    class BlockTargets(OutputCalibration):
        turn = 0
        port_codes: list = []
        rng = np.random.default_rng(seed + 1000)

        def positions(self, streams: int) -> np.ndarray:
            per = horizon // BLOCK
            out = np.empty((streams, per), np.int64)
            for s in range(streams):
                start = np.random.default_rng([seed + s, self.turn // WALK_TURNS]).integers(
                    0, bank.blocks - WALK_TURNS * per)
                out[s] = start + (self.turn % WALK_TURNS) * per + np.arange(per)
            return out

        def apply(self, array, uniforms):
            kept = self.biases, self.patterns
            if "reuse" in parts:
                self.biases = {}
            if "patterns" in parts or "joint" in parts:
                self.patterns = {}
            try:
                out = super().apply(array, uniforms)
            finally:
                self.biases, self.patterns = kept
            if not parts:
                return out
            raw = np.asarray(array, np.float64)
            pos = self.positions(len(out) // horizon)
            for s in range(len(pos)):
                for j, b in enumerate(pos[s]):
                    rows = slice(s * horizon + j * BLOCK, s * horizon + (j + 1) * BLOCK)
                    self._block(out, raw, rows, b)
            if recondition:  # bytes and duration mapped again within the new packet-count bins
                for name, (_parent, parent_column, edges, maps) in self.conditional.items():
                    column, draw = self.numeric[name][0], uniforms[:, list(self.numeric).index(name)]
                    bins = np.searchsorted(edges, out[:, parent_column], side="right")
                    for k, pair in enumerate(maps):
                        rows = np.flatnonzero(bins == k)
                        if pair is not None and len(rows):
                            out[rows, column] = quantile_map(raw[rows, column], *pair, draw[rows])
            self.turn += 1
            return out

        def _block(self, out, raw, rows, b):
            if "numbers" in parts:
                for name, (column, _mq, train_q) in self.numeric.items():
                    if recondition and name in self.conditional:
                        continue
                    rank = rankdata(out[rows, column] + self.rng.uniform(0, 1e-9, BLOCK), "ordinal") - 1
                    if numbers == "exact":
                        p = bank.ranks[name][b][rank]
                    elif numbers == "knots":
                        p = np.interp(rank / (BLOCK - 1), KNOTS, bank.knots[name][b])
                    else:
                        z = ndtri((rank + 0.5) / BLOCK)
                        mean, std = bank.normal[name][0][b], bank.normal[name][1][b]
                        p = ndtr(mean + std * (z - z.mean()) / z.std())
                    out[rows, column] = np.interp(p, np.linspace(0, 1, GRID), train_q)
            if "reuse" in parts:
                for name, (a, c, bias) in self.biases.items():
                    chosen = assign(raw[rows, a:c] + bias, bank.codes[name][b])
                    out[rows, a:c] = np.eye(c - a)[chosen]
            if "quad" in parts:
                quads = bank.quads[b]
                r, c = linear_sum_assignment(-self._address_code_scores(raw, rows, quads))
                chosen = np.empty(BLOCK, np.int64)
                chosen[r] = quads[c]
                self._write_address_codes(out, rows, chosen)
                self.port_codes.append(np.stack([(chosen // 64) % 64, chosen % 64], axis=1))
            if not parts & {"patterns", "proto", "joint"}:
                return
            (fname, (fa, fb, _values, fbias)), = self.patterns.items()
            masks = self._pattern_bits[fname]
            mask_scores = pattern_scores(raw[rows, fa:fb], masks) + fbias
            if "patterns" in parts:
                out[rows, fa:fb] = masks[assign(mask_scores, bank.masks[b])]
            decoder = codec.transforms["proto"].table.decoder
            pa = codec.feature_slices["proto"].start
            pb = pa + decoder.vectors.shape[1]
            offset, temperature = self.tokens["proto"]
            proto_scores = np.maximum(decoder.log_weights(np.clip(raw[rows, pa:pb], 0, 1), offset,
                                                          temperature), -BIG)
            if "proto" in parts:
                out[rows, pa:pb] = decoder.vectors[assign(proto_scores, bank.protos[b])]
            if "joint" in parts:
                self._joint(out, raw, rows, b, mask_scores, proto_scores, masks, decoder, pa, pb)

        def _address_code_scores(self, raw, rows, quads):
            """(BLOCK, slots) the model's calibrated srcip + dstip code scores of each slot's codes."""
            (sa, sb, sbias), (da, db, dbias) = self.biases["srcip"], self.biases["dstip"]
            return ((raw[rows, sa:sb] + sbias)[:, quads // 64 ** 3]
                    + (raw[rows, da:db] + dbias)[:, (quads // 64 ** 2) % 64])

        def _write_address_codes(self, out, rows, quads):
            """Set the block's srcip and dstip codes (one-hot) to those of ``quads``."""
            (sa, sb, _), (da, db, _) = self.biases["srcip"], self.biases["dstip"]
            out[rows, sa:sb] = np.eye(sb - sa)[quads // 64 ** 3]
            out[rows, da:db] = np.eye(db - da)[(quads // 64 ** 2) % 64]

        def _joint(self, out, raw, rows, b, mask_scores, proto_scores, masks, decoder, pa, pb):
            sides = {}
            if "side" in parts:
                targets = bank.sides[b]
                if "skeleton" in parts:
                    targets, quads = bank.skeletons[b][:, 0], bank.skeletons[b][:, 1]
                pairs, below = targets // 4, {"srcport": (targets // 2) % 2, "dstport": targets % 2}
                scores = proto_scores[:, pairs // 1000] + mask_scores[:, pairs % 1000]
                for col in ("srcport", "dstport"):
                    transform = codec.transforms[col]
                    start = codec.feature_slices[col].start
                    kernel = transform.table.decoder
                    offset, temperature = self.tokens[col]
                    q = np.clip(raw[rows, start:start + transform.dim], 0, 1)
                    d2 = np.maximum((q ** 2).sum(1)[:, None] + kernel._norms[None, :] - 2 * q @ kernel.vectors.T, 0)
                    logw = kernel.log_prior + offset - d2 / (2 * (temperature or kernel.temperature) ** 2)
                    low = ((transform.port_of >= 0) & (transform.port_of < 1024)) | (transform.range_of == 0)
                    side = np.stack([lse(np.where(low, -np.inf, logw)), lse(np.where(low, logw, -np.inf))], 1)
                    scores = scores + side[:, below[col]]
                    sides[col] = (logw, low, transform, start)
                if "skeleton" in parts:
                    scores = scores + self._address_code_scores(raw, rows, quads)
                slot = np.arange(BLOCK)     # --in-order: the real block's records in their order
                if not in_order:
                    r, c = linear_sum_assignment(-scores)
                    slot[r] = c
                chosen = pairs[slot]
                if "skeleton" in parts:
                    picked = quads[slot]
                    self._write_address_codes(out, rows, picked)
                    self.port_codes.append(np.stack([(picked // 64) % 64, picked % 64,
                                                     below["srcport"][slot], below["dstport"][slot]], axis=1))
                for col, (logw, low, transform, start) in sides.items():
                    for i in range(BLOCK):
                        w = np.where(low == bool(below[col][slot[i]]), logw[i], -np.inf)
                        w = np.exp(w - w.max())
                        token = self.rng.choice(len(w), p=w / w.sum())
                        out[rows.start + i, start:start + transform.dim] = transform.table.scaled[token]
            else:
                pairs = bank.pairs[b]
                r, c = linear_sum_assignment(-(proto_scores[:, pairs // 1000] + mask_scores[:, pairs % 1000]))
                chosen = np.empty(BLOCK, np.int64)
                chosen[r] = pairs[c]
            (_name, (fa, fb, _values, _bias)), = self.patterns.items()
            out[rows, pa:pb] = decoder.vectors[chosen // 1000]
            out[rows, fa:fb] = masks[chosen % 1000]

    return BlockTargets.from_state(base.state())


def copy_ports(table: pd.DataFrame, codes: np.ndarray, history: dict, rng, newfix: bool,
               nearest: bool = True, lag_slack: int | None = None) -> None:
    """``quad``: each port with code k > 0 becomes the port k records back (same protocol);
    with ``newfix`` a code-0 ephemeral port already among the last DEPTH is redrawn.
    ``skeleton`` (codes carry the record's port sides): the port k back if it is on the
    record's side, else (``nearest``) the nearest earlier one on that side (``lag_slack``:
    only lags within that many of k, the closest lag first)."""
    proto = table["proto"].to_numpy()
    for col, ci in (("srcport", 0), ("dstport", 1)):
        values = table[col].to_numpy().copy()
        seen, protos = history.setdefault(col, ([], []))
        for i in range(len(values)):
            k = codes[i, ci]
            if k > 0 and codes.shape[1] > 2:  # skeleton: the nearest earlier port on the record's side
                side = codes[i, ci + 2] == 1
                near = [j for j in range(1, min(DEPTH, len(seen)) + 1)
                        if protos[-j] == proto[i] and (seen[-j] < 1024) == side]
                if lag_slack is not None:
                    near = [j for j in near if abs(j - k) <= lag_slack]
                    near.sort(key=lambda j: abs(j - k))
                if k in near or (near and nearest):
                    values[i] = seen[-(k if k in near else near[0])]
            elif k > 0 and len(seen) >= k and protos[-k] == proto[i]:
                values[i] = seen[-k]
            elif k == 0 and newfix and proto[i] in (6, 17) and values[i] >= 1024:
                while values[i] in seen[-DEPTH:]:
                    values[i] = rng.integers(1024, 65536)
            seen.append(values[i])
            protos.append(proto[i])
        del seen[:-DEPTH], protos[:-DEPTH]
        table[col] = values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="calibration_ablation.py's --cache")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="the trace the model trained on")
    p.add_argument("--parts", nargs="*", default=["numbers", "reuse", "joint"],
                   choices=["numbers", "reuse", "patterns", "proto", "joint", "side", "quad", "skeleton"])
    p.add_argument("--numbers", choices=["normal", "knots", "exact"], default="normal",
                   help="a block's numbers: normal-score mean and std, 7 quantiles, or all 25 ranks")
    p.add_argument("--recondition", action="store_true",
                   help="block targets for ts and pkt only; byt and td mapped within pkt's bins")
    p.add_argument("--bank-last", type=int, default=None,
                   help="build the bank from the last N training records only")
    p.add_argument("--in-order", action="store_true",
                   help="skeleton: no assignment, each record takes the real record at its place "
                        "(a bound: the discrete make-up replayed, not a generator)")
    p.add_argument("--newfix", action="store_true")
    p.add_argument("--no-port-runs", action="store_true")
    p.add_argument("--exact-lag", action="store_true",
                   help="skeleton: copy a port only from exactly k records back")
    p.add_argument("--lag-slack", type=int, default=None,
                   help="skeleton: copy from a lag within this many of k (the closest first)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--start-ts", type=float, default=1460390400.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flowdiff.artifact import load_artifact
    from flowdiff.calibrate import artifact_split
    from flowdiff.codec.calibration import OutputCalibration
    from flowdiff.daemon.generator import StreamGenerator
    from flowdiff.model import make_sampler

    parts = set(args.parts)
    cached = np.load(args.cache)
    reference, fit_outputs, raw = cached["reference"], cached["fit_outputs"], list(cached["raw"])
    if raw[0].shape[0] != 1:
        raise SystemExit(f"{args.cache}: one stream only (got {raw[0].shape[0]})")
    artifact = load_artifact(args.model)
    codec = artifact.codec
    codec.set_calibration(None)
    fitted = Path(f"{args.cache}.cal.pkl")
    if fitted.exists():
        with open(fitted, "rb") as handle:
            base = OutputCalibration.from_state(pickle.load(handle))
    else:
        base = OutputCalibration.fit(codec, fit_outputs, reference, horizon=artifact.horizon)
        with open(fitted, "wb") as handle:
            pickle.dump(base.state(), handle)
    table = None
    if parts & {"side", "quad", "skeleton"}:
        table = artifact_split(artifact, args.data)[0]
        if len(table) != len(reference):
            raise SystemExit(f"{args.cache}: {len(reference)} reference records, the split has {len(table)}")
    bank = Bank(base, codec, reference, table)
    if args.bank_last:  # the latest blocks only (ranks still among all training records)
        bank.keep_last(args.bank_last // BLOCK)
    calibration = block_calibration(base, codec, bank, artifact.horizon,
                                    args.seed, parts, args.numbers, args.recondition,
                                    args.in_order)
    if args.no_port_runs:
        calibration.runs = {k: v for k, v in calibration.runs.items() if k not in ("srcport", "dstport")}
    codec.set_calibration(calibration)
    decoder = StreamGenerator(artifact.model, codec, make_sampler("conditional", steps=10),
                              context=artifact.context, horizon=artifact.horizon, streams=1,
                              seed=args.seed)
    decoder.clocks.fill_(args.start_ts)
    tables, history, rng = [], {}, np.random.default_rng(args.seed + 2000)
    started = time.perf_counter()
    for steps in raw:
        calibration.port_codes.clear()
        records = decoder.decode_turn(steps).records
        if parts & {"quad", "skeleton"}:
            copy_ports(records, np.concatenate(calibration.port_codes), history, rng, args.newfix,
                       not args.exact_lag, args.lag_slack)
        tables.append(records)
    seconds = time.perf_counter() - started
    out = pd.concat(tables, ignore_index=True).iloc[:args.records]
    out.to_parquet(args.out)
    decoded = sum(len(t) for t in tables)
    print(f"{args.out}: {len(out)} records; decoding {decoded} took {seconds:.0f} s "
          f"({decoded / seconds:.0f} records/s, parts: {' '.join(sorted(parts)) or 'none'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
