"""Block targets: each 25-record block of a stream gets the make-up of a real training block.

A window classifier tells the calibrated stream from real traffic mostly by what a short
stretch of records is made of: how many flows of each protocol and flag mask, how many
repeat a host or a port of a few records back, how the packet counts of the stretch are
spread. The calibration fixes each field's share over the whole stream, not per stretch,
and the network follows block summaries given as input only halfway (docs/model.md,
"Block conditioning"). So the decoder imposes them (docs/model.md, "Block targets"):

* the **bank** holds, for each consecutive ``length``-record block of the training records,
  the seven quantiles (``KNOTS``) of each number's training ranks (ts, td, pkt, byt; bytes
  and duration ranked within their packet count's bin, as the calibration maps them) and
  the block's records' discrete make-up, one *skeleton* class per record: protocol, flag
  mask, whether each port is below 1024, the srcip / dstip reuse codes and each port's lag
  code (the smallest k <= ``DEPTH`` with the same port k records back, 0 if none);
* stream i reads the bank in order from a place drawn from (its seed, turn //
  ``WALK_TURNS``), as a block-conditioned model's bank is walked, so the sequence of
  make-ups it gets is a real one;
* in each block the model keeps its say through an **assignment**
  (``scipy.optimize.linear_sum_assignment``): the block's records take the real block's
  25 skeletons, one each, so that the sum of the model's calibrated scores (protocol
  token, flag mask, port side, address reuse codes) is highest; each number's values keep
  the model's order within the block and take the real block's quantiles (bytes and
  duration within the bin of the record's new packet count, so bytes per packet stay
  real);
* a port is drawn from the model's kernel posterior restricted to its assigned side, with
  log-prior offsets per (protocol, side) fitted so that, over the model's outputs, the
  draws come at training's frequencies within that protocol and side (without them a TCP
  record given the low side drew ICMP's port 0 as readily as 80); the assignment scores
  a record's port output against each protocol's side with them; after decoding, a port
  whose lag code is k becomes the port k records back when that one has the same
  protocol and side (``copy_ports``); a new ephemeral port that is already
  among the stream's last ``DEPTH`` ports is redrawn.

The bank stores quantiles and class indices, no records; it is fitted by ``flowdiff
calibrate`` with the calibration it depends on (flag masks and token offsets) and saved
next to ``codec.json`` as ``block_targets.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowdiff.codec.calibration import GRID, pattern_scores

WALK_TURNS = 50     # a stream reads a bank from one place for this many turns, then jumps
LENGTH = 25         # records per block
DEPTH = 16          # port lag codes: the same port k <= DEPTH records back
KNOTS = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])   # quantiles kept per block and number
FILE = "block_targets.npz"
QUANT = 65535.0     # knots are saved as round(p * QUANT), uint16
PORTS = ("srcport", "dstport")
ADDRESSES = ("srcip", "dstip")
PROBABILITIES = np.linspace(0.0, 1.0, GRID)   # the calibration's quantile grid


def port_lag_codes(ports: np.ndarray) -> np.ndarray:
    """(n,) ports -> (n,) smallest k <= DEPTH with ports[i - k] == ports[i], else 0."""
    codes = np.zeros(len(ports), np.int64)
    for k in range(DEPTH, 0, -1):
        codes[k:][ports[k:] == ports[:-k]] = k
    return codes


def walk_blocks(seed: int, turn: int, first_block: int, n_blocks: int, bank_size: int) -> np.ndarray:
    """(n_blocks,) bank indices ``first_block`` .. of a stream's walk at ``turn``: the stream
    reads a bank in order from a place drawn from (its seed, turn // WALK_TURNS), wrapping
    at the end (this bank's and a block-conditioned model's, ``flowdiff.model.blocks``)."""
    start = int(np.random.default_rng([int(seed), turn // WALK_TURNS]).integers(bank_size))
    return (start + first_block + np.arange(n_blocks)) % bank_size


def low_tokens(transform) -> np.ndarray:
    """(V,) which of a port field's tokens stand for ports below 1024 (the services and
    the range token of 0-1023)."""
    return ((transform.port_of >= 0) & (transform.port_of < 1024)) | (transform.range_of == 0)


class BlockTargets:
    """The bank of training blocks and the per-block decoding rule (module docstring)."""

    def __init__(self, knots: dict[str, np.ndarray], classes: np.ndarray, skeletons: np.ndarray,
                 codes: dict[str, np.ndarray] | None = None, length: int = LENGTH,
                 side_offsets: dict[str, np.ndarray] | None = None):
        self.length = int(length)
        self.knots = {name: np.asarray(v, np.float64) for name, v in knots.items()}  # (N, 7)
        self.codes = {name: np.asarray(v, np.int64) for name, v in (codes or {}).items()}  # (N, L)
        self.classes = np.asarray(classes, np.int64)          # (V, 7) one row per skeleton class
        self.skeletons = np.asarray(skeletons, np.int64)      # (N, length) class per record
        # port -> (protocol tokens, 2 sides, port tokens) log-prior offsets of the side draws
        self.side_offsets = {name: np.asarray(v, np.float64) for name, v in (side_offsets or {}).items()}
        if self.skeletons.ndim != 2 or self.skeletons.shape[1] != self.length:
            raise ValueError(f"block targets: skeletons must be (blocks, {self.length}), got "
                             f"{self.skeletons.shape}")
        for name, k in self.knots.items():
            if k.shape != (len(self.skeletons), len(KNOTS)):
                raise ValueError(f"block targets: {name} knots must be ({len(self.skeletons)}, "
                                 f"{len(KNOTS)}), got {k.shape}")
        for name, c in self.codes.items():
            if c.shape != self.skeletons.shape:
                raise ValueError(f"block targets: {name} codes must be {self.skeletons.shape}, "
                                 f"got {c.shape}")

    @property
    def blocks(self) -> int:
        return len(self.skeletons)

    # ------------------------------------------------------------------ fit
    @staticmethod
    def unsupported(codec, calibration) -> str | None:
        """Why block targets cannot decode this codec (None: they can): they need the
        flag masks' patterns, word2vec ports and protocol, and srcip / dstip reuse codes."""
        if calibration is None:
            return "the codec has no calibration"
        if len(calibration.patterns) != 1:
            return "the codec has no single flag-mask field"
        for name in PORTS + ("proto",):
            if name not in calibration.tokens or not hasattr(codec.transforms.get(name), "table"):
                return f"{name} is not a word2vec field"
        for name in PORTS:
            if not hasattr(codec.transforms[name], "port_of"):
                return f"{name} has no port tokens"
        for name in ADDRESSES:
            if name not in calibration.biases:
                return f"{name} has no reuse code"
        return None

    @classmethod
    def fit(cls, codec, calibration, reference: np.ndarray, table, length: int = LENGTH,
            outputs: np.ndarray | None = None) -> "BlockTargets":
        """``reference`` (n, F): the training records encoded, in time order; ``table``: the
        same records decoded (their ports). ``calibration``: the codec's fitted one;
        ``outputs``: the model outputs it was fitted on (for the side draws' offsets; None:
        no offsets)."""
        n = (len(reference) // length) * length
        if n // length < 2:
            raise ValueError(f"block targets: {len(reference)} training records make fewer than "
                             f"two blocks of {length}")
        from scipy.stats import rankdata

        ref = np.asarray(reference[:n], np.float64)
        knots = {}
        for name, (column, _model_q, _train_q) in calibration.numeric.items():
            if name in calibration.conditional:   # bytes, duration: the rank within pkt's bin
                _parent, parent_column, edges, _maps = calibration.conditional[name]
                bins = np.searchsorted(edges, ref[:, parent_column], side="right")
                ranks = np.empty(n)
                for b in np.unique(bins):
                    mine = bins == b
                    ranks[mine] = (rankdata(ref[mine, column], "average") - 0.5) / mine.sum()
            else:
                ranks = (rankdata(ref[:, column], "average") - 0.5) / n
            knots[name] = np.rint(np.quantile(np.sort(ranks.reshape(-1, length), axis=1), KNOTS,
                                              axis=1).T * QUANT) / QUANT   # as saved
        (flags, (fa, fb, mask_values, _bias)), = calibration.patterns.items()
        masks = np.asarray(mask_values, np.int64)[
            pattern_scores(ref[:, fa:fb], calibration._pattern_bits[flags]).argmax(axis=1)]
        protos = codec.transforms["proto"].table.decoder.exact.rows(np.ascontiguousarray(
            ref[:, codec.feature_slices["proto"]][:, :codec.transforms["proto"].table.dim], np.float32))
        columns = [protos, masks]
        for port in PORTS:
            columns.append((table[port].to_numpy()[:n] < 1024).astype(np.int64))
        for address in ADDRESSES:
            a, b, _bias = calibration.biases[address]
            columns.append(ref[:, a:b].argmax(axis=1))
        for port in PORTS:
            columns.append(port_lag_codes(table[port].to_numpy()[:n]))
        rows = np.stack(columns, axis=1)                                     # (n, 8)
        classes, index = np.unique(rows, axis=0, return_inverse=True)
        codes = {name: ref[:, a:b].argmax(axis=1).reshape(-1, length)     # tos, label
                 for name, (a, b, _bias) in calibration.biases.items() if name not in ADDRESSES}
        offsets = {}
        if outputs is not None:
            sample = np.asarray(outputs, np.float64)[np.random.default_rng(0).permutation(
                len(outputs))[:SIDE_SAMPLE]]
            offsets = {port: fit_side_offsets(codec, calibration, port, sample, protos,
                                              table[port].to_numpy()[:n])
                       for port in PORTS}
        return cls(knots, classes, index.reshape(-1, length), codes, length, offsets)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        # compact: probabilities as 1/65535ths (the quantile maps have 1,024 steps), small ints
        arrays = {f"knots.{name}": np.rint(v * QUANT).astype(np.uint16) for name, v in self.knots.items()}
        arrays.update({f"codes.{name}": _small(v) for name, v in self.codes.items()})
        arrays.update({f"offsets.{name}": v for name, v in self.side_offsets.items()})
        np.savez_compressed(path, length=np.array(self.length), classes=_small(self.classes),
                            skeletons=_small(self.skeletons), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "BlockTargets":
        with np.load(path, allow_pickle=False) as data:
            knots = {key[6:]: data[key] / QUANT for key in data.files if key.startswith("knots.")}
            codes = {key[6:]: data[key] for key in data.files if key.startswith("codes.")}
            offsets = {key[8:]: data[key] for key in data.files if key.startswith("offsets.")}
            return cls(knots, data["classes"], data["skeletons"], codes, int(data["length"]), offsets)

    # ------------------------------------------------------------------ decoding
    def positions(self, seeds: list[int], turn: int, horizon: int) -> np.ndarray:
        """(S, horizon // length) bank blocks of each stream's horizon at ``turn``: stream
        i reads the bank in order from a place drawn from (seeds[i], turn // WALK_TURNS)."""
        per = horizon // self.length
        return np.array([walk_blocks(seed, turn, (turn % WALK_TURNS) * per, per, self.blocks)
                         for seed in seeds], np.int64).reshape(len(seeds), per)

    def apply(self, codec, calibration, out: np.ndarray, raw: np.ndarray, seeds: list[int],
              turn: int, rngs: list) -> np.ndarray:
        """Impose the walked blocks' targets on the calibrated outputs ``out`` (S*H, F),
        stream-major, in place; ``raw`` the model's outputs. Returns the (S*H, 4) port plan
        (srcport lag, dstport lag, srcport below 1024, dstport below 1024) for
        ``copy_ports``; rows past the last whole block get lag 0 (no copy)."""
        from scipy.optimize import linear_sum_assignment

        streams = len(seeds)
        horizon = len(out) // streams
        plan = np.zeros((len(out), 4), np.int64)
        plan[:, 2:] = -1
        scores = self._scores(codec, calibration, raw)
        for s, blocks in enumerate(self.positions(seeds, turn, horizon)):
            for j, b in enumerate(blocks):
                rows = np.arange(s * horizon + j * self.length, s * horizon + (j + 1) * self.length)
                self._numbers(calibration, out, rows, b, rngs[s])
                for name, codes in self.codes.items():   # tos, label: the block's counts
                    start, stop, bias = calibration.biases[name]
                    slots = codes[b]
                    r, c = linear_sum_assignment(-(raw[rows, start:stop] + bias)[:, slots])
                    chosen = np.empty(len(rows), np.int64)
                    chosen[r] = slots[c]
                    out[rows, start:stop] = np.eye(stop - start)[chosen]
                classes = self.classes[self.skeletons[b]]                   # (L, 8)
                cost = self._class_scores(scores, rows, classes)
                r, c = linear_sum_assignment(-cost)
                picked = np.empty_like(classes)
                picked[r] = classes[c]
                self._write(codec, calibration, out, rows, picked, scores, rngs[s])
                plan[rows] = picked[:, [6, 7, 2, 3]]
        return plan

    def _scores(self, codec, calibration, raw: np.ndarray) -> dict:
        """The model's calibrated log-scores per record: protocol tokens, flag masks, each
        port's (V,) token log-weights and its fit to each protocol's two sides (with the
        side offsets), each address's reuse codes."""
        (flags, (fa, fb, mask_values, mask_bias)), = calibration.patterns.items()
        proto = codec.transforms["proto"]
        pa = codec.feature_slices["proto"].start
        offset, temperature = calibration.tokens["proto"]
        scores = {
            "masks": pattern_scores(raw[:, fa:fb], calibration._pattern_bits[flags]) + mask_bias,
            # flag mask value -> its row among the calibration's patterns
            "mask_index": np.zeros(max(mask_values) + 1, np.int64),
            "proto": np.maximum(proto.table.decoder.log_weights(
                np.clip(raw[:, pa:pa + proto.table.dim], 0, 1), offset, temperature), -1e6)}
        scores["mask_index"][np.asarray(mask_values, np.int64)] = np.arange(len(mask_values))
        for port in PORTS:
            logw, low = port_log_weights(codec, calibration, port, raw)
            offsets = self.side_offsets.get(port, np.zeros((1, 2, logw.shape[1])))
            # (n, protocols, 2): how well the record's port output fits each protocol's side,
            # log of the sum over the side's tokens of exp(logw + offset): a matrix product
            sides = np.empty((len(logw), len(offsets), 2))
            for side, mask in enumerate((~low, low)):
                part = logw[:, mask]
                top = part.max(axis=1, keepdims=True)
                sums = np.exp(part - top) @ np.exp(offsets[:, side, mask]).T   # (n, P)
                sides[:, :, side] = np.log(np.maximum(sums, 1e-300)) + top
            scores[port] = (logw, low, np.maximum(sides, -1e6))
        for address in ADDRESSES:
            a, b, bias = calibration.biases[address]
            scores[address] = raw[:, a:b] + bias
        return scores

    def _class_scores(self, scores: dict, rows: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(L records, L slots) the model's score of giving each record each slot's class."""
        masks = scores["mask_index"][classes[:, 1]]
        total = scores["proto"][rows][:, classes[:, 0]] + scores["masks"][rows][:, masks]
        for k, port in enumerate(PORTS):
            sides = scores[port][2][rows]                                   # (L, P, 2)
            total = total + sides[:, np.minimum(classes[:, 0], sides.shape[1] - 1), classes[:, 2 + k]]
        for k, address in enumerate(ADDRESSES):
            codes = scores[address][rows]
            total = total + codes[:, np.minimum(classes[:, 4 + k], codes.shape[1] - 1)]
        return total

    def _numbers(self, calibration, out: np.ndarray, rows: np.ndarray, block: int, rng) -> None:
        """Each number keeps the order of its calibrated values in the block (ties in a
        seeded random order) and takes the bank block's quantiles; a number the calibration
        maps within its parent's bins (bytes and duration within the packet count) is
        ranked, and takes the block's quantiles, by its rank within its bin, and is mapped
        within the bin of the parent's new value, so bytes per packet stay real."""
        conditional = calibration.conditional
        names = sorted(calibration.numeric, key=lambda name: name in conditional)  # parents first
        given = {}   # a conditional number's rank within its parent's bin, before the parent moves
        for name, (_parent, parent_column, edges, maps) in conditional.items():
            column, _model_q, train_q = calibration.numeric[name]
            given[name] = self._bin_map(out[rows, column], out[rows, parent_column], edges, maps,
                                        train_q, inverse=True)
        for name in names:
            column, _model_q, train_q = calibration.numeric[name]
            if name not in self.knots:
                continue
            key = given.get(name, out[rows, column])
            rank = np.argsort(np.lexsort((rng.random(len(rows)), key)))
            p = np.interp(rank / (len(rows) - 1), KNOTS, self.knots[name][block])
            if name not in conditional:
                out[rows, column] = np.interp(p, PROBABILITIES, train_q)
                continue
            _parent, parent_column, edges, maps = conditional[name]
            out[rows, column] = self._bin_map(p, out[rows, parent_column], edges, maps, train_q)

    @staticmethod
    def _bin_map(values: np.ndarray, parents: np.ndarray, edges: np.ndarray, maps: list,
                 train_q: np.ndarray, inverse: bool = False) -> np.ndarray:
        """Ranks within the parent's bin -> training values of that bin (``inverse``:
        values -> their ranks), each record by its parent's bin (a bin without a map: the
        marginal training quantiles)."""
        bins = np.searchsorted(edges, parents, side="right")
        mapped = np.empty(len(values))
        for k in np.unique(bins):
            mine = bins == k
            target = train_q if maps[k] is None else maps[k][1]
            mapped[mine] = np.interp(values[mine], target, PROBABILITIES) if inverse else \
                np.interp(values[mine], PROBABILITIES, target)
        return mapped

    def _write(self, codec, calibration, out, rows, picked, scores, rng) -> None:
        """Write the picked classes: protocol token, flag mask, address reuse codes, and a
        port token drawn from the model's posterior on the picked side."""
        proto = codec.transforms["proto"].table
        pa = codec.feature_slices["proto"].start
        out[rows, pa:pa + proto.dim] = proto.scaled[picked[:, 0]]
        (flags, (fa, fb, _values, _bias)), = calibration.patterns.items()
        index = scores["mask_index"][picked[:, 1]]
        out[rows, fa:fb] = calibration._pattern_bits[flags][index]
        for k, address in enumerate(ADDRESSES):
            a, b, _bias = calibration.biases[address]
            out[rows, a:b] = np.eye(b - a)[np.minimum(picked[:, 4 + k], b - a - 1)]
        for k, port in enumerate(PORTS):
            logw, low, _sides = scores[port]
            transform = codec.transforms[port]
            start = codec.feature_slices[port].start
            logw = logw[rows]
            if port in self.side_offsets:   # (protocol, side) offsets
                logw = logw + self.side_offsets[port][picked[:, 0], picked[:, 2 + k]]
            w = np.where(low[None, :] == (picked[:, 2 + k] == 1)[:, None], logw, -np.inf)
            w = np.exp(w - w.max(axis=1, keepdims=True))
            cdf = np.cumsum(w, axis=1)
            draws = rng.random(len(rows)) * cdf[:, -1]
            tokens = np.minimum((cdf < draws[:, None]).sum(axis=1), cdf.shape[1] - 1)
            out[rows, start:start + transform.dim] = transform.table.scaled[tokens]


SIDE_SAMPLE = 10_000     # model outputs the side offsets are fitted on
SIDE_MIN_RECORDS = 200   # a (protocol, side) with fewer training records keeps offset 0
SIDE_ROUNDS = 100
SIDE_LIMIT = 12.0
# kernel width of the port scores and side draws: the calibration's (0.05 for the packaged
# model) made a record given the side its output is far from take that side's nearest token,
# whatever its frequency (port JSD 0.21 / 0.19, mean 0.086); at 0.3 the offsets reach
# training's frequencies (0.187 / 0.165, mean 0.076, as without block targets), 0.5 the same
SIDE_TEMPERATURE = 0.3


def _small(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the smallest unsigned type that holds them (for the file)."""
    values = np.asarray(values)
    for kind in (np.uint8, np.uint16, np.uint32):
        if values.size == 0 or values.max() <= np.iinfo(kind).max:
            return values.astype(kind)
    return values.astype(np.int64)


def port_log_weights(codec, calibration, port: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, F) model outputs -> ((n, V) the port tokens' calibrated kernel log-weights, with
    no cutoff, and (V,) which tokens are on the low side)."""
    transform = codec.transforms[port]
    start = codec.feature_slices[port].start
    kernel = transform.table.decoder
    offset, temperature = calibration.tokens[port]
    temperature = SIDE_TEMPERATURE
    q = np.clip(raw[:, start:start + transform.dim], 0, 1)
    d2 = np.maximum((q ** 2).sum(1)[:, None] + kernel._norms[None, :] - 2 * q @ kernel.vectors.T, 0)
    logw = kernel.log_prior + offset - d2 / (2 * (temperature or kernel.temperature) ** 2)
    return logw, low_tokens(transform)


def fit_side_offsets(codec, calibration, port: str, outputs: np.ndarray, protos: np.ndarray,
                     ports: np.ndarray) -> np.ndarray:
    """(protocol tokens, 2, V) log-prior offsets: for each protocol and side with enough
    training records, the offsets with which the side-restricted draws over ``outputs``
    (those whose most likely protocol is that one, or all if too few) have the training
    records' token frequencies within that protocol and side. ``protos`` / ``ports``: the
    training records' protocol tokens and ports."""
    transform = codec.transforms[port]
    logw, low = port_log_weights(codec, calibration, port, outputs)
    tokens = transform.lookup[np.asarray(ports, np.int64)]                    # (n,) token rows
    proto = codec.transforms["proto"]
    pa = codec.feature_slices["proto"].start
    offset, temperature = calibration.tokens["proto"]
    likely = proto.table.decoder.log_weights(np.clip(outputs[:, pa:pa + proto.table.dim], 0, 1),
                                             offset, temperature).argmax(axis=1)
    n_protos, n_tokens = len(proto.table.scaled), logw.shape[1]
    offsets = np.zeros((n_protos, 2, n_tokens))
    for p in range(n_protos):
        queries = logw[likely == p] if (likely == p).sum() >= SIDE_MIN_RECORDS else logw
        for side in (0, 1):
            mine = (protos == p) & ((ports < 1024) == bool(side))
            if mine.sum() < SIDE_MIN_RECORDS:
                continue
            target = np.bincount(tokens[mine], minlength=n_tokens) / mine.sum()
            base = np.where(low[None, :] == bool(side), queries, -np.inf)
            base = base - base.max(axis=1, keepdims=True)
            fitted = np.zeros(n_tokens)
            for _ in range(SIDE_ROUNDS):
                weights = np.exp(base + fitted)
                expected = (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)
                fitted = np.clip(fitted + np.log(target + 1e-6) - np.log(expected + 1e-6),
                                 -SIDE_LIMIT, SIDE_LIMIT)
            offsets[p, side] = fitted
    return offsets


def copy_ports(columns: dict, plan: np.ndarray, history: dict, rngs: list, streams: int) -> None:
    """After decoding: in each stream, a port whose lag code is k becomes the port k records
    back when that record has the same protocol and the port is on the planned side; a
    new (lag 0) TCP/UDP port >= 1024 already among the stream's last DEPTH ports is redrawn.
    ``history`` keeps each stream's last DEPTH ports and protocols (keys
    ``block.srcport``, ``block.dstport``, ``block.proto``; -1 = unknown) across turns."""
    proto = columns["proto"].reshape(streams, -1)
    horizon = proto.shape[1]
    seen_proto = np.concatenate([history.get("block.proto", np.full((streams, DEPTH), -1)),
                                 proto], axis=1)
    for k, port in enumerate(PORTS):
        values = np.array(columns[port], np.int64).reshape(streams, -1)
        seen = np.concatenate([history.get(f"block.{port}", np.full((streams, DEPTH), -1)),
                               values], axis=1)                              # (S, DEPTH + H)
        lags = plan[:, k].reshape(streams, -1)
        sides = plan[:, 2 + k].reshape(streams, -1)
        for s in range(streams):
            for i in range(horizon):
                at = DEPTH + i
                lag = lags[s, i]
                if lag > 0:
                    earlier = seen[s, at - lag]
                    if (earlier >= 0 and seen_proto[s, at - lag] == seen_proto[s, at]
                            and (earlier < 1024) == (sides[s, i] == 1)):
                        seen[s, at] = earlier
                elif seen_proto[s, at] in (6, 17) and seen[s, at] >= 1024:
                    while seen[s, at] in seen[s, at - DEPTH:at]:
                        seen[s, at] = rngs[s].integers(1024, 65536)
        columns[port] = seen[:, DEPTH:].reshape(-1)
        history[f"block.{port}"] = seen[:, -DEPTH:].copy()
    history["block.proto"] = seen_proto[:, -DEPTH:].copy()
