"""Block targets: each 25-record block of a stream gets the make-up of a real training block.

A window classifier tells the calibrated stream from real traffic mostly by what a short
stretch of records is made of: how many flows of each protocol and flag mask, how many
repeat a host or a port of a few records back, how the packet counts of the stretch are
spread. The calibration fixes each field's share over the whole stream, not per stretch,
and the network follows block summaries given as input only halfway (docs/model.md,
"Block conditioning"). So the decoder imposes them (docs/model.md, "Block targets"):

* the **bank** holds, for each consecutive ``length``-record block of the training records,
  thirteen quantiles (``KNOTS``: every other record's of 25; seven reproduced a block's
  spread too smoothly, and a window classifier told them from the real records they were
  taken from, docs/model.md) of each number's training ranks (ts, td, pkt, byt; bytes
  and duration ranked within their packet count's bin, as the calibration maps them) and
  the block's records' discrete make-up in their order, one *skeleton* class per record:
  protocol, flag mask, whether each port is below 1024, a lag code for each of srcip,
  dstip, srcport and dstport (``lag_codes``: the same value k <= ``DEPTH`` records back in
  the field itself, or in its peer field -- a reversed flow's srcip is the previous
  dstip, its srcport the previous dstport --; for an address also "seen DEPTH < k <=
  ``FAR`` back"; else new) and, per port, whether real traffic went on copying it into a
  big copy tree (``tree_sizes``); beside it each record's ToS and label codes;
* a walk reads the bank in order for ``WALK_TURNS`` steps (one stream's horizon each) from
  one place, then jumps (``walk_blocks``: places in a golden-ratio sequence from an origin
  set by its seed, so that its jumps cover the training period evenly, and the origins of
  walks with consecutive seeds are spread over it too), as a block-conditioned model's
  bank is walked, so the sequence of make-ups it gets is a real one. The streams of one
  timeline take consecutive steps of one walk (``StreamGenerator.walks``), so their merged
  output reads one real stretch at a time; streams on their own timelines walk their own;
* in each block the model keeps its say through an **assignment**
  (``scipy.optimize.linear_sum_assignment``): the block's records take the real block's
  25 skeletons, one each, so that the sum of the model's calibrated scores (protocol
  token, flag mask, port side, address reuse codes) and of the **number profile** (log
  P(the record's number bin | the skeleton's protocol, flag mask and port sides) over the
  training records, ``number_profile``: a SYN-only skeleton goes to a one-packet record,
  a full conversation's to a long one) is highest, and move, with all their fields, to
  their skeleton's place in the block, so that lag codes point where they pointed in
  real traffic; each takes its real record's ToS and label (the model's own were
  independent of its protocol: EF-marked flows, real VoIP over UDP, came out 72 % TCP);
  each number's values keep the model's order within the block
  and take the real block's quantiles (bytes and duration within the bin of the record's
  new packet count, so bytes per packet stay real);
* a port is drawn from the model's kernel posterior restricted to its assigned side, with
  log-prior offsets per (kind, protocol, side) fitted so that, over the model's outputs,
  the draws come at training's frequencies within that kind, protocol and side (without
  them a TCP record given the low side drew ICMP's port 0 as readily as 80; without the
  kinds the busiest services lose their share, ``fit_side_offsets``);
* after decoding (``copy_fields``), each field whose lag code points back takes that value
  (a port only if that record has the same protocol and the value is on the planned
  side); a new field whose value is among its or its peer's last ``DEPTH`` values takes
  the first of its candidates that is not (ports: further draws of the same posterior;
  addresses: the model's addresses elsewhere in the turn).

The bank stores quantiles and class indices, no records; it is fitted by ``flowdiff
calibrate`` with the calibration it depends on (flag masks and token offsets) and saved
next to ``codec.json`` as ``block_targets.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowdiff.codec.calibration import GRID, pattern_scores

WALK_TURNS = 50     # a stream reads a bank from one place for this many turns, then jumps
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0   # the walk's step between places, as a fraction of the bank
ORIGIN_STEP = np.sqrt(2.0) - 1.0     # between the origins of consecutive seeds' walks (not a
                                     # rational multiple of GOLDEN: no two walks' places coincide)
LENGTH = 25         # records per block
DEPTH = 16          # lag codes: the same value k <= DEPTH records back
FAR = 64            # an address's "far" code: seen DEPTH < k <= FAR records back
FAR_CODE = 2 * DEPTH + 1
FAR_TRIES = 8
BIG_TREE = 64       # a port whose copy tree holds at least this many records is drawn as "big"
KNOTS = np.linspace(0.0, 1.0, 13)    # quantiles kept per block and number (every other record's)
SEVEN_KNOTS = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])   # a bank saved before the knots were
FILE = "block_targets.npz"
QUANT = 65535.0     # knots are saved as round(p * QUANT), uint16
PORTS = ("srcport", "dstport")
ADDRESSES = ("srcip", "dstip")
LAGGED = ADDRESSES + PORTS         # the fields with lag codes, class columns 4..7
PEER = {"srcip": "dstip", "dstip": "srcip", "srcport": "dstport", "dstport": "srcport"}
PROBABILITIES = np.linspace(0.0, 1.0, GRID)   # the calibration's quantile grid
CANDIDATES = 8
NONE = -2          # no candidate (a record outside the whole blocks)
RANGED = -1        # a port candidate that is a range token: a new ephemeral port
NUMBER_QUARTERS = np.array([0.25, 0.5, 0.75])   # a conditional number's rank within its bin, cut
NUMBER_SMOOTHING = 20.0   # pseudo-records of the marginal in each class key's number profile
# weight of the number profile in the assignment (0: the model alone). Cached rollout,
# decode seeds 7-10 (docs/model.md, session 20): record score 0.297 / 0.291 / 0.286 /
# 0.279 / 0.280 at 1 / 1.5 / 2 / 3 / 4, window score 0.159-0.165 throughout
NUMBER_WEIGHT = 3.0


def lag_codes(values: np.ndarray, peer: np.ndarray | None = None, far: bool = False) -> np.ndarray:
    """(n,) values (and their peer field's) -> (n,) the smallest k <= DEPTH with the same
    value k records back: k in the field itself, DEPTH + k in the peer field (a reversed
    flow's srcip is the previous dstip), the field itself first on a tie; else (``far``)
    FAR_CODE if the value is in either field DEPTH < k <= FAR records back; else 0."""
    codes = np.zeros(len(values), np.int64)
    if far:
        for k in range(FAR, DEPTH, -1):
            hit = values[k:] == values[:-k]
            if peer is not None:
                hit |= values[k:] == peer[:-k]
            codes[k:][hit] = FAR_CODE
    for k in range(DEPTH, 0, -1):
        if peer is not None:
            codes[k:][values[k:] == peer[:-k]] = DEPTH + k
        codes[k:][values[k:] == values[:-k]] = k
    return codes


def walk_blocks(seed: int, turn: int, first_block: int, n_blocks: int, bank_size: int) -> np.ndarray:
    """(n_blocks,) bank indices ``first_block`` .. of a stream's walk at ``turn``: the stream
    reads a bank in order for ``WALK_TURNS`` turns from a place, wrapping at the end (this
    bank's and a block-conditioned model's, ``flowdiff.model.blocks``). The places follow
    a golden-ratio sequence from an origin u set by the seed: place e is at the fraction
    (u + e / phi) mod 1 of the bank, so any run of jumps spreads over the whole bank (a
    stream's first twenty places cover the training period evenly, where twenty random
    ones leave hours out and crowd others)."""
    start = int(((walk_origin(seed) + (turn // WALK_TURNS) * GOLDEN) % 1.0) * bank_size)
    return (start + first_block + np.arange(n_blocks)) % bank_size


def walk_origin(seed: int) -> float:
    """A stream's first walk place, as a fraction of the bank: seed * (sqrt 2 - 1) mod 1, so
    the streams of one daemon (seeds seed + i, also across shards) start spread evenly over
    the bank, and their merged output mixes the training period's parts as it does (random
    origins crowd some hours and leave others out until each stream has jumped a few
    times)."""
    return float((int(seed) * ORIGIN_STEP) % 1.0)


def _kinds(classes: np.ndarray, k: int) -> np.ndarray:
    """(L,) the kind of each class's port k: 1 if real traffic kept copying it (a big
    tree), 0 otherwise (a bank without kinds: all 0)."""
    return classes[:, 8 + k] if classes.shape[1] > 8 + k else np.zeros(len(classes), np.int64)


def tree_sizes(codes: np.ndarray) -> np.ndarray:
    """(n, 2) srcport / dstport lag codes -> (n, 2) how many records' ports (itself
    included) take their value from this one, directly or along a chain of copies (own or
    peer field): the size of the copy tree below it."""
    n = len(codes)
    sizes = np.ones(2 * n)                                 # node 2 i + f: record i, port f
    lags = np.where(codes > DEPTH, codes - DEPTH, codes)
    parents = np.where(codes > 0, 2 * (np.arange(n)[:, None] - lags)
                       + np.where(codes > DEPTH, 1 - np.arange(2), np.arange(2)), -1).reshape(-1)
    for node in range(2 * n - 1, -1, -1):                # children come after their parents
        parent = parents[node]
        if parent >= 0:
            sizes[parent] += sizes[node]
    return sizes.reshape(n, 2)


def model_codes(codes: np.ndarray, width: int) -> np.ndarray:
    """Lag codes -> the codec's reuse codes (0 = new, k = the field k back): a peer copy is
    "new" to the field's own reuse code (the copy is made after decoding)."""
    return np.where((codes > DEPTH) | (codes >= width), 0, codes)


def low_tokens(transform) -> np.ndarray:
    """(V,) which of a port field's tokens stand for ports below 1024 (the services and
    the range token of 0-1023)."""
    return ((transform.port_of >= 0) & (transform.port_of < 1024)) | (transform.range_of == 0)


class BlockTargets:
    """The bank of training blocks and the per-block decoding rule (module docstring)."""

    def __init__(self, knots: dict[str, np.ndarray], classes: np.ndarray, skeletons: np.ndarray,
                 codes: dict[str, np.ndarray] | None = None, length: int = LENGTH,
                 side_offsets: dict[str, np.ndarray] | None = None,
                 knot_positions: np.ndarray = KNOTS,
                 number_profile: tuple[np.ndarray, np.ndarray] | None = None):
        self.length = int(length)
        self.knot_positions = np.asarray(knot_positions, np.float64)   # (K,) in [0, 1]
        self.knots = {name: np.asarray(v, np.float64) for name, v in knots.items()}  # (N, K knots)
        self.codes = {name: np.asarray(v, np.int64) for name, v in (codes or {}).items()}  # (N, L)
        self.classes = np.asarray(classes, np.int64)          # (V, 10) one row per skeleton class
        self.skeletons = np.asarray(skeletons, np.int64)      # (N, length) class per record
        # port -> (2 kinds: small, big copy tree; protocol tokens, 2 sides, port tokens) log-prior
        # offsets of the side draws (a bank of one kind: the same offsets for both)
        self.side_offsets = {name: np.broadcast_to(np.asarray(v, np.float64), (2,) + np.shape(v)[-3:])
                             for name, v in (side_offsets or {}).items()}
        # (keys (K, 4) protocol, flag mask, port sides; (K + 1, B) log P(number bin | key),
        # the last row 0 for a class without a key): how a class's records' numbers fall
        # (``number_bins``); None: a bank saved before it, the model's order alone
        self.number_profile = None
        self.class_keys = None
        if number_profile is not None:
            keys, logp = (np.asarray(v) for v in number_profile)
            self.number_profile = (keys.astype(np.int64), np.vstack(   # float32, as saved
                [np.asarray(logp, np.float32).astype(np.float64), np.zeros((1, logp.shape[1]))]))
            lookup = {tuple(k): i for i, k in enumerate(self.number_profile[0])}
            self.class_keys = np.array([lookup.get(tuple(c[:4]), len(keys)) for c in self.classes],
                                       np.int64)
        if self.skeletons.ndim != 2 or self.skeletons.shape[1] != self.length:
            raise ValueError(f"block targets: skeletons must be (blocks, {self.length}), got "
                             f"{self.skeletons.shape}")
        for name, k in self.knots.items():
            if k.shape != (len(self.skeletons), len(self.knot_positions)):
                raise ValueError(f"block targets: {name} knots must be ({len(self.skeletons)}, "
                                 f"{len(self.knot_positions)}), got {k.shape}")
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
            outputs: np.ndarray | None = None, knot_positions: np.ndarray | None = None
            ) -> "BlockTargets":
        """``reference`` (n, F): the training records encoded, in time order; ``table``: the
        same records decoded (their ports). ``calibration``: the codec's fitted one;
        ``outputs``: the model outputs it was fitted on (for the side draws' offsets; None:
        no offsets); ``knot_positions``: the quantiles kept per block and number (None:
        ``KNOTS``)."""
        positions = KNOTS if knot_positions is None else np.asarray(knot_positions, np.float64)
        n = (len(reference) // length) * length
        if n // length < 2:
            raise ValueError(f"block targets: {len(reference)} training records make fewer than "
                             f"two blocks of {length}")
        from scipy.stats import rankdata

        ref = np.asarray(reference[:n], np.float64)
        knots, training_ranks = {}, {}
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
            training_ranks[name] = ranks
            knots[name] = np.rint(np.quantile(np.sort(ranks.reshape(-1, length), axis=1), positions,
                                              axis=1).T * QUANT) / QUANT   # as saved
        (flags, (fa, fb, mask_values, _bias)), = calibration.patterns.items()
        masks = np.asarray(mask_values, np.int64)[
            pattern_scores(ref[:, fa:fb], calibration._pattern_bits[flags]).argmax(axis=1)]
        protos = codec.transforms["proto"].table.decoder.exact.rows(np.ascontiguousarray(
            ref[:, codec.feature_slices["proto"]][:, :codec.transforms["proto"].table.dim], np.float32))
        values = {name: np.asarray(table[name], np.int64)[:n] for name in LAGGED}
        columns = [protos, masks]
        for port in PORTS:
            columns.append((values[port] < 1024).astype(np.int64))
        for name in LAGGED:
            columns.append(lag_codes(values[name], values[PEER[name]], far=name in ADDRESSES))
        port_codes = np.stack(columns[-2:], axis=1)                          # (n, 2)
        big = tree_sizes(port_codes) >= BIG_TREE                             # (n, 2)
        columns.extend(big.T.astype(np.int64))
        rows = np.stack(columns, axis=1)                                     # (n, 10)
        classes, index = np.unique(rows, axis=0, return_inverse=True)
        codes = {name: ref[:, a:b].argmax(axis=1).reshape(-1, length)     # tos, label
                 for name, (a, b, _bias) in calibration.biases.items() if name not in ADDRESSES}
        offsets = {}
        if outputs is not None:
            sample = np.asarray(outputs, np.float64)[np.random.default_rng(0).permutation(
                len(outputs))[:SIDE_SAMPLE]]
            offsets = {port: fit_side_offsets(codec, calibration, port, sample, protos,
                                              values[port], big[:, k])
                       for k, port in enumerate(PORTS)}
        bins = number_bins(calibration, ref, training_ranks)
        profile = None if bins is None else number_profile(rows[:, :4], *bins)
        return cls(knots, classes, index.reshape(-1, length), codes, length, offsets, positions,
                   profile)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        # compact: probabilities as 1/65535ths (the quantile maps have 1,024 steps), small ints
        arrays = {f"knots.{name}": np.rint(v * QUANT).astype(np.uint16) for name, v in self.knots.items()}
        arrays.update({f"codes.{name}": _small(v) for name, v in self.codes.items()})
        arrays.update({f"offsets.{name}": v for name, v in self.side_offsets.items()})
        if self.number_profile is not None:
            arrays.update({"numbers.keys": _small(self.number_profile[0]),
                           "numbers.logp": self.number_profile[1][:-1].astype(np.float32)})
        np.savez_compressed(path, length=np.array(self.length), knot_positions=self.knot_positions,
                            classes=_small(self.classes),
                            skeletons=_small(self.skeletons), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "BlockTargets":
        with np.load(path, allow_pickle=False) as data:
            knots = {key[6:]: data[key] / QUANT for key in data.files if key.startswith("knots.")}
            codes = {key[6:]: data[key] for key in data.files if key.startswith("codes.")}
            offsets = {key[8:]: data[key] for key in data.files if key.startswith("offsets.")}
            positions = data["knot_positions"] if "knot_positions" in data.files else SEVEN_KNOTS
            profile = ((data["numbers.keys"], data["numbers.logp"])
                       if "numbers.keys" in data.files else None)   # a bank saved before: None
            return cls(knots, data["classes"], data["skeletons"], codes, int(data["length"]), offsets,
                       positions, profile)

    # ------------------------------------------------------------------ decoding
    def positions(self, walks: list[tuple[int, int]], horizon: int) -> np.ndarray:
        """(S, horizon // length) bank blocks of each stream's horizon: stream i is at step
        ``walks[i] = (seed, turn)`` of the walk seeded ``seed`` (``walk_blocks``; a daemon's
        streams on one timeline share one walk, ``StreamGenerator.walks``)."""
        per = horizon // self.length
        return np.array([walk_blocks(seed, turn, (turn % WALK_TURNS) * per, per, self.blocks)
                         for seed, turn in walks], np.int64).reshape(len(walks), per)

    def apply(self, codec, calibration, out: np.ndarray, raw: np.ndarray,
              walks: list[tuple[int, int]], rngs: list) -> dict:
        """Impose the walked blocks' targets on the calibrated outputs ``out`` (S*H, F),
        stream-major, in place; ``raw`` the model's outputs. Returns the plan for
        ``copy_fields``: "codes" (S*H, 4) the lag codes of srcip, dstip, srcport, dstport;
        "sides" (S*H, 2) whether each port is below 1024; "candidates" (S*H, 4, C) other
        values for a new field that repeats a recent one. Rows past the last whole block
        get code 0, side -1 and no candidates (NONE)."""
        from scipy.optimize import linear_sum_assignment

        streams = len(walks)
        horizon = len(out) // streams
        plan = {"codes": np.zeros((len(out), len(LAGGED)), np.int64),
                "sides": np.full((len(out), len(PORTS)), -1, np.int64),
                "candidates": np.full((len(out), len(LAGGED), CANDIDATES), NONE, np.int64)}
        scores = self._scores(codec, calibration, raw)
        addresses = model_addresses(codec, out)          # the turn's addresses, as the model wrote them
        for s, blocks in enumerate(self.positions(walks, horizon)):
            rng = rngs[s]
            for j, b in enumerate(blocks):
                rows = np.arange(s * horizon + j * self.length, s * horizon + (j + 1) * self.length)
                ranks = self._numbers(calibration, out, rows, b, rng)
                classes = self.classes[self.skeletons[b]]                   # (L, 10)
                fit = self._class_scores(scores, rows, classes)
                # each record's numbers are set: a slot whose class's real records have such
                # numbers fits it better (log P(record's number bin | slot's class))
                bins = (number_bins(calibration, out[rows], ranks)
                        if self.number_profile is not None and NUMBER_WEIGHT else None)
                if bins is not None and bins[1] == self.number_profile[1].shape[1]:  # its bins
                    profile = self.number_profile[1][self.class_keys[self.skeletons[b]]]  # (L, B)
                    fit = fit + NUMBER_WEIGHT * profile[:, bins[0]].T
                r, c = linear_sum_assignment(-fit)
                # the record given slot c moves to the bank record's place c, with all its
                # fields, so the block's lag codes point where they pointed in real traffic
                order = np.empty(len(rows), np.int64)
                order[c] = r
                source = rows[order]
                out[rows] = out[source]
                for name, codes in self.codes.items():   # ToS, label: the bank record's
                    start, stop, _bias = calibration.biases[name]
                    out[rows, start:stop] = np.eye(stop - start)[codes[b]]
                plan["candidates"][rows, 2:] = self._write(codec, calibration, out, rows, classes,
                                                           scores, rng, source)
                plan["codes"][rows] = classes[:, 4:8]
                plan["sides"][rows] = classes[:, 2:4]
                plan["candidates"][rows, :2] = addresses[rng.integers(len(addresses),
                                                                      size=(len(rows), 2, CANDIDATES))]
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
            offsets = self.side_offsets.get(port, np.zeros((2, 1, 2, logw.shape[1])))
            # (n, 2 kinds, protocols, 2 sides): how well the record's port output fits each
            # kind's protocol's side, log of the sum over the side's tokens of
            # exp(logw + offset): a matrix product
            sides = np.empty((len(logw),) + offsets.shape[:3])
            for side, mask in enumerate((~low, low)):
                part = logw[:, mask]
                top = part.max(axis=1, keepdims=True)
                for kind in range(2):
                    sums = np.exp(part - top) @ np.exp(offsets[kind, :, side][:, mask]).T   # (n, P)
                    sides[:, kind, :, side] = np.log(np.maximum(sums, 1e-300)) + top
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
            sides = scores[port][2][rows]                                   # (L, 2, P, 2)
            total = total + sides[:, _kinds(classes, k),
                                  np.minimum(classes[:, 0], sides.shape[2] - 1), classes[:, 2 + k]]
        for k, address in enumerate(ADDRESSES):
            codes = scores[address][rows]
            total = total + codes[:, model_codes(classes[:, 4 + k], codes.shape[1])]
        return total

    def _numbers(self, calibration, out: np.ndarray, rows: np.ndarray, block: int, rng) -> None:
        """Each number keeps the order of its calibrated values in the block (ties in a
        seeded random order) and takes the bank block's quantiles; a number the calibration
        maps within its parent's bins (bytes and duration within the packet count) is
        ranked, and takes the block's quantiles, by its rank within its bin, and is mapped
        within the bin of the parent's new value, so bytes per packet stay real."""
        conditional = calibration.conditional
        names = sorted(calibration.numeric, key=lambda name: name in conditional)  # parents first
        ranks = {}   # name -> (L,) the training rank each record took (within its bin: conditional)
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
            p = np.interp(rank / (len(rows) - 1), self.knot_positions, self.knots[name][block])
            ranks[name] = p
            if name not in conditional:
                out[rows, column] = np.interp(p, PROBABILITIES, train_q)
                continue
            _parent, parent_column, edges, maps = conditional[name]
            out[rows, column] = self._bin_map(p, out[rows, parent_column], edges, maps, train_q)
        return ranks

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

    def _write(self, codec, calibration, out, rows, picked, scores, rng, source) -> np.ndarray:
        """Write the picked classes into ``out[rows]``: protocol token, flag mask, address
        reuse codes, and a port token drawn from the model's posterior (of the outputs
        ``source``, where these records came from) on the picked side, with the offsets of
        the picked kind. Returns (L, 2, CANDIDATES) port candidates: that draw and more
        (RANGED for a range token) for ``copy_fields``."""
        proto = codec.transforms["proto"].table
        pa = codec.feature_slices["proto"].start
        out[rows, pa:pa + proto.dim] = proto.scaled[picked[:, 0]]
        (flags, (fa, fb, _values, _bias)), = calibration.patterns.items()
        index = scores["mask_index"][picked[:, 1]]
        out[rows, fa:fb] = calibration._pattern_bits[flags][index]
        for k, address in enumerate(ADDRESSES):
            a, b, _bias = calibration.biases[address]
            out[rows, a:b] = np.eye(b - a)[model_codes(picked[:, 4 + k], b - a)]
        candidates = []
        for k, port in enumerate(PORTS):
            logw, low, _sides = scores[port]
            transform = codec.transforms[port]
            start = codec.feature_slices[port].start
            logw = logw[source]
            if port in self.side_offsets:   # (kind, protocol, side) offsets
                logw = logw + self.side_offsets[port][_kinds(picked, k),
                                                      picked[:, 0], picked[:, 2 + k]]
            w = np.where(low[None, :] == (picked[:, 2 + k] == 1)[:, None], logw, -np.inf)
            w = np.exp(w - w.max(axis=1, keepdims=True))
            cdf = np.cumsum(w, axis=1)
            draws = rng.random((len(rows), CANDIDATES)) * cdf[:, -1:]
            tokens = np.minimum((cdf[:, None, :] < draws[:, :, None]).sum(axis=2), cdf.shape[1] - 1)
            out[rows, start:start + transform.dim] = transform.table.scaled[tokens[:, 0]]
            candidates.append(transform.port_of[tokens])
        return np.stack(candidates, axis=1)                                  # (L, 2, C)


SIDE_SAMPLE = 10_000     # model outputs the side offsets are fitted on
SIDE_MIN_RECORDS = 200   # a (protocol, side) with fewer training records keeps offset 0
SIDE_ROUNDS = 100
SIDE_LIMIT = 12.0
# kernel width of the port scores and side draws: the calibration's (0.05 for the packaged
# model) made a record given the side its output is far from take that side's nearest token,
# whatever its frequency (port JSD 0.21 / 0.19, mean 0.086); at 0.3 the offsets reach
# training's frequencies (0.187 / 0.165, mean 0.076, as without block targets), 0.5 the same
SIDE_TEMPERATURE = 0.3


def number_bins(calibration, encoded: np.ndarray, ranks: dict) -> tuple[np.ndarray, int] | None:
    """((n,) number bin of each record, number of bins): the bin of its parent number (the
    packet count, on the calibration's conditional edges) x the quarter of each conditional
    number's (bytes, duration) rank within that bin (``ranks``: name -> (n,) training
    ranks, within the parent's bin for a conditional number). None: the calibration has no
    conditional numbers, or a rank is missing."""
    conditional = dict(sorted(calibration.conditional.items()))
    if not conditional or any(name not in ranks for name in conditional):
        return None
    parent_column, edges = next(iter(conditional.values()))[1:3]
    bins = np.searchsorted(edges, encoded[:, parent_column], side="right")
    count = len(edges) + 1
    for name in conditional:
        bins = bins * (len(NUMBER_QUARTERS) + 1) + np.searchsorted(NUMBER_QUARTERS, ranks[name])
        count *= len(NUMBER_QUARTERS) + 1
    return bins.astype(np.int64), count


def number_profile(keys: np.ndarray, bins: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) class keys (protocol, flag mask, port sides) and (n,) number bins of the
    training records -> (unique keys (K, 4), (K, count) log P(bin | key)), each key's
    profile smoothed toward the marginal by NUMBER_SMOOTHING pseudo-records (a rare key
    says little)."""
    unique, index = np.unique(keys, axis=0, return_inverse=True)
    index = index.reshape(-1)
    table = np.zeros((len(unique), count))
    np.add.at(table, (index, bins), 1.0)
    marginal = (table.sum(axis=0) + 1.0) / (table.sum() + count)          # (count,)
    profile = (table + NUMBER_SMOOTHING * marginal) / (table.sum(axis=1, keepdims=True)
                                                        + NUMBER_SMOOTHING)
    return unique, np.log(profile)


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
                     ports: np.ndarray, big: np.ndarray | None = None) -> np.ndarray:
    """(2 kinds, protocol tokens, 2 sides, V) log-prior offsets: for each kind of record
    (1: its port heads a big copy tree, ``tree_sizes`` >= BIG_TREE; 0: not), protocol and
    side with enough training records, the offsets with which the side-restricted draws
    over ``outputs`` (those whose most likely protocol is that one, or all if too few) have
    the token frequencies of the training records of that kind, protocol and side.
    ``protos`` / ``ports`` / ``big``: the training records' protocol tokens, ports and
    kinds (None: one kind).

    Why kinds: decoding relabels the bank's copy trees, each tree taking the value drawn
    at its root. Real traffic's biggest trees are its busiest services (port 80 is among
    a stream's last 16 ports almost always); drawn from the side's marginal frequencies,
    a big tree is port 80 only as often as any record is, and the stream's port-80 share
    falls from 24 % to 14 %. Drawing big trees from big trees' frequencies keeps it."""
    transform = codec.transforms[port]
    logw, low = port_log_weights(codec, calibration, port, outputs)
    tokens = transform.lookup[np.asarray(ports, np.int64)]                    # (n,) token rows
    proto = codec.transforms["proto"]
    pa = codec.feature_slices["proto"].start
    offset, temperature = calibration.tokens["proto"]
    likely = proto.table.decoder.log_weights(np.clip(outputs[:, pa:pa + proto.table.dim], 0, 1),
                                             offset, temperature).argmax(axis=1)
    n_protos, n_tokens = len(proto.table.scaled), logw.shape[1]
    big = np.zeros(len(ports), bool) if big is None else np.asarray(big, bool)
    offsets = np.zeros((2, n_protos, 2, n_tokens))
    for p in range(n_protos):
        queries = logw[likely == p] if (likely == p).sum() >= SIDE_MIN_RECORDS else logw
        for kind, side in np.ndindex(2, 2):
            mine = (protos == p) & ((ports < 1024) == bool(side)) & (big == bool(kind))
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
            offsets[kind, p, side] = fitted
    return offsets


def model_addresses(codec, out: np.ndarray) -> np.ndarray:
    """(2 n,) the srcip and dstip addresses the bits of the outputs ``out`` (n, F) decode
    to (a new address that repeats a recent one takes one of these instead: the model's
    own addresses, with its heavy hitters)."""
    values = []
    for address in ADDRESSES:
        transform = codec.transforms[address]
        start = codec.feature_slices[address].start + transform.bits_start
        values.append(transform.bits.decode(out[:, start:start + transform.bits.width])[0])
    return np.concatenate(values)


def copy_fields(columns: dict, plan: dict, history: dict, rngs: list, streams: int,
                chain: bool = False) -> None:
    """After decoding, per stream in record order: a field whose lag code is k (DEPTH + k)
    takes the value of its own (peer) field k records back, a port only when that record
    has the same protocol and the value is on the planned side; a field with code FAR_CODE
    a value of either field DEPTH < k <= FAR back that is not among the last DEPTH; a field
    with code 0 (new) whose value is among the last DEPTH values of it or its peer takes
    its first candidate that is not (a new TCP/UDP port >= 1024 is redrawn until it is
    not). ``history`` keeps each stream's last FAR values of each field and of the
    protocol (keys ``block.<field>``, ``block.proto``; -1 = unknown) across turns; the
    addresses' reuse histories are set to the copied values. ``chain`` (the streams'
    records are consecutive stretches of one timeline): the records before stream s's are
    stream s - 1's (stream 0's: the last stream's of the previous turn), so copies at the
    seams read the records the merged output has before them."""
    proto = np.asarray(columns["proto"], np.int64).reshape(streams, -1)
    horizon = proto.shape[1]
    seen_proto = np.concatenate([_kept(history, "block.proto", streams), proto], axis=1)
    seen = {name: np.concatenate([_kept(history, f"block.{name}", streams),
                                  np.asarray(columns[name], np.int64).reshape(streams, -1)],
                                 axis=1) for name in LAGGED}                # (S, FAR + H)
    codes = plan["codes"].reshape(streams, horizon, len(LAGGED))
    sides = plan["sides"].reshape(streams, horizon, len(PORTS))
    candidates = plan["candidates"].reshape(streams, horizon, len(LAGGED), -1)
    if chain:   # stream 0 continues the last stream of the previous turn
        seen_proto[0, :FAR] = seen_proto[-1, :FAR]
        for name in LAGGED:
            seen[name][0, :FAR] = seen[name][-1, :FAR]
    for s in range(streams):
        rng = rngs[s]
        if chain and s > 0:   # ... and stream s the copied records of stream s - 1
            seen_proto[s, :FAR] = seen_proto[s - 1, -FAR:]
            for name in LAGGED:
                seen[name][s, :FAR] = seen[name][s - 1, -FAR:]
        for i in range(horizon):
            at = FAR + i
            for f, name in enumerate(LAGGED):
                own, peer = seen[name][s], seen[PEER[name]][s]
                code = codes[s, i, f]
                is_port = f >= len(ADDRESSES)
                recent = None
                if code == FAR_CODE:
                    recent = _recent(own, peer, at, DEPTH)
                    if _copy_far(own, peer, at, recent, rng):
                        continue
                    code = 0                  # nothing to copy: a new value
                if code > 0:
                    lag = code if code <= DEPTH else code - DEPTH
                    earlier = (own if code <= DEPTH else peer)[at - lag]
                    if earlier >= 0 and (not is_port or (
                            seen_proto[s, at - lag] == seen_proto[s, at]
                            and (earlier < 1024) == (sides[s, i, f - 2] == 1))):
                        own[at] = earlier
                    continue
                if is_port and seen_proto[s, at] not in (6, 17):
                    continue
                if recent is None:
                    recent = _recent(own, peer, at, DEPTH)
                if own[at] not in recent:
                    continue
                for candidate in candidates[s, i, f]:
                    if candidate == NONE:
                        break
                    if candidate == RANGED:   # a new port in the planned side's range
                        own[at] = (rng.integers(1, 1024) if sides[s, i, f - 2] == 1
                                   else rng.integers(1024, 65536))
                        break
                    if candidate not in recent:
                        own[at] = candidate
                        break
                while is_port and own[at] >= 1024 and own[at] in recent:
                    own[at] = rng.integers(1024, 65536)
    for name in LAGGED:
        columns[name] = seen[name][:, FAR:].reshape(-1)
        history[f"block.{name}"] = seen[name][:, -FAR:].copy()
        if name in ADDRESSES and name in history:   # the codec's reuse history: the copies
            width = history[name].shape[1]
            history[name] = seen[name][:, -width:].copy()
    history["block.proto"] = seen_proto[:, -FAR:].copy()


def _copy_far(own: np.ndarray, peer: np.ndarray, at: int, recent: set, rng) -> bool:
    """Copy into ``own[at]`` a value of either field DEPTH < k <= FAR records back that is
    not among ``recent`` (FAR_TRIES random picks); False if none was found."""
    for _ in range(FAR_TRIES):
        lag = int(rng.integers(DEPTH + 1, FAR + 1))
        earlier = (own if rng.random() < 0.5 else peer)[at - lag]
        if earlier >= 0 and earlier not in recent:
            own[at] = earlier
            return True
    return False


def _recent(own: np.ndarray, peer: np.ndarray, at: int, depth: int) -> set:
    """The values of a field and its peer in the ``depth`` records before ``at``."""
    return set(own[at - depth:at].tolist()) | set(peer[at - depth:at].tolist())


def _kept(history: dict, key: str, streams: int) -> np.ndarray:
    """(S, FAR) a stream's last FAR values under ``key`` (-1 where unknown; a shorter
    history is padded on the left)."""
    kept = np.asarray(history.get(key, np.full((streams, 0), -1)), np.int64)[:, -FAR:]
    return np.concatenate([np.full((streams, FAR - kept.shape[1]), -1, np.int64), kept], axis=1)
