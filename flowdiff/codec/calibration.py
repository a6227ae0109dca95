"""Output calibration: map the model's per-field output distribution onto the training one.

A diffusion model's samples are close to the data in their joint structure but not in every
marginal: a few percent of inter-arrival outputs land on the top edge of [0, 1] (the longest
gap of the training day, 33 s, instead of a few ms), the "same host as k records back" code
loses to "new host" in the arg-max, and so on. The decoded stream inherits each of those
shifts. Calibration measures them once, on outputs of the model itself (a predict-mode
rollout with the serving sampler, ``flowdiff calibrate``), against the encoded training
records, and undoes them before decoding:

* **numbers** (width-1 fields: ``quantile``, ``log_minmax``, ``minmax``): quantile mapping.
  An output ``u`` goes to its rank ``p`` among the model's outputs, then to the training
  encodings' value at ``p``. Outputs sitting exactly on a value the model repeats (the 0 and
  1 edges after clamping) get a rank drawn uniformly within that value's share (randomised
  probability integral transform), from the decoder's per-stream generator. The ranks, and
  with them the order and co-movement of the records, stay the model's; only the scale is
  the data's.
* **tokens** (``word2vec`` ports and protocol, decoded by sampling the kernel posterior of
  flowdiff.codec.kernel): a log-prior offset per token, fitted (EM-style fixed point) so that
  the expected token frequencies over the model's outputs match the training ones.
* **conditional numbers** (``CONDITIONAL_NUMBERS``: bytes and duration within the packet
  count): mapped like the numbers, but within each bin of the (calibrated) packet count,
  against the training records of that bin. Mapping pkt and byt one by one gives each the
  right marginal and wrong bytes per packet (which the repair then clamps, moving byt);
  within the bin the pair keeps training's bytes per packet, and one-packet flows keep
  their zero duration.
* **patterns** (small ``bits`` fields: the TCP flags): thresholding each bit invents masks
  and loses rare ones (SYN alone); the 8 outputs are decoded jointly as the training mask
  with the highest score ``-PATTERN_SCALE * distance^2 + bias``, the biases fitted so the
  masks come at training frequencies.
* **runs** (token draws): the token of each record is drawn from its own kernel posterior;
  drawn independently, consecutive records rarely keep the same service, as real bursts
  do. The draws of a token field are correlated along each stream (a Gaussian AR(1)
  copula; each draw stays uniform, so frequencies do not move), with the correlation
  whose token repeat rate is nearest training's.
* **ports** (range tokens of ``word2vec`` ports): a model writes a rare port's 16 bits as a
  common service port's (80), so every ephemeral port came out as the range start + 80. A
  range token's port is drawn instead from training's ranged ports of that range (a
  histogram of 64-port buckets, uniform within a bucket).
* **addresses** (the 32 bits of ``reuse_bits`` fields): a model writes a frequent host's 32
  bits with a few of them off, which decodes to an address nobody uses (the heavy hitters
  dissolve into thousands of invented hosts). The addresses training's 'new'-coded records
  use at least ``ADDRESS_MIN_COUNT`` times form a vocabulary; an output whose rounded bits
  are not in it moves to a vocabulary address (sampled by ``count * exp(offset - d^2 / 2
  tau^2)`` over the soft bit distance d, tau = ``ADDRESS_TAU``) when that is at most
  ``threshold`` further than its own rounded bits. The threshold is fitted so the share of
  records on vocabulary addresses matches the training share; the rest keep their own
  (new) address. The per-address offsets are fitted (as the token offsets) so the snapped
  records land on each address as often as training's 'new' records do; without them the
  kernel piles them onto the few hosts nearest the model's average bits.
* **arg-max blocks** (the reuse code of ``reuse_bits`` / ``reuse_pair_bits`` addresses,
  ``onehot`` fields): an
  additive bias per class, fitted so that the arg-max class frequencies over the model's
  outputs match the training frequencies (prior correction).
* **follows** (the follow code of ``word2vec_follow`` ports): the same biases, fitted
  separately within each ``FOLLOW_CLASSES`` class of the record's address (decided by the
  calibrated codes). A reversed conversation swaps its ports far more often than a
  repeated pair repeats both; one bias for all records gives each class the average share.
  The second port's classes are also split by the first port's calibrated decision: a
  repeated pair keeps one of its ports, rarely both, which two decisions fitted each to
  its own share and taken independently do not give.

The calibration is part of the codec (``codec.json``, key ``calibration``); a codec without
one decodes as before. It is fitted for one model and one sampler (both recorded in it).
"""

from __future__ import annotations

import numpy as np

from flowdiff.codec.tokens import BUCKET_SHIFT
from flowdiff.codec.transforms import BitsTransform

GRID = 1025                 # quantile grid points (probabilities k / (GRID - 1))
BIAS_SWEEPS = 20            # coordinate sweeps of the arg-max bias fit
BIAS_LIMIT = 4.0            # |bias| bound (outputs lie in [0, 1])
EPS = 1e-6


def argmax_blocks(codec) -> dict[str, tuple[int, int]]:
    """field -> (start, stop) feature columns whose arg-max is decoded: the reuse code of
    ``reuse_bits`` / ``reuse_pair_bits`` fields, the pair's conversation code (key
    ``srcip.conversation``), the follow code of ``word2vec_follow`` ports (key
    ``port.follow``) and whole ``onehot`` fields."""
    blocks = {}
    for name, transform in codec.transforms.items():
        start = codec.feature_slices[name].start
        if name in codec.reuse_fields:
            blocks[name] = (start, start + transform.code_width)
            if transform.conversation_width:
                blocks[f"{name}.conversation"] = (start + transform.code_width,
                                                  start + transform.bits_start)
        elif name in codec.follow_fields:
            blocks[f"{name}.follow"] = (start + transform.follow_start, start + transform.width)
        elif transform.name == "onehot" and transform.width > 1:
            blocks[name] = (start, start + transform.width)
    return blocks


def numeric_columns(codec) -> dict[str, int]:
    """field -> feature column of the width-1 number fields."""
    return {name: codec.feature_slices[name].start for name, t in codec.transforms.items()
            if t.name in ("quantile", "log_minmax", "minmax") and t.width == 1}


FOLLOW_CLASSES = ("new", "own", "same pair", "reversed pair")   # a port's follow-code classes
MIN_CLASS_RECORDS = 200     # a class with fewer outputs or training records keeps the pooled bias


def follow_spans(codec) -> dict[str, tuple]:
    """'port.follow' -> ((start, stop) of its follow code, (start, stop) of its address's
    own reuse code, (start, stop) of the pair's conversation code or None, depth K), in the
    order they are decided (``follow_fields``)."""
    blocks = argmax_blocks(codec)
    spans = {}
    for port in codec.follow_fields:
        address = codec.transforms[port].address
        conversation = next((span for name, span in blocks.items()     # the pair's one code
                             if name.endswith(".conversation")), None)
        spans[f"{port}.follow"] = (blocks[f"{port}.follow"], blocks[address], conversation,
                                   codec.transforms[address].depth)
    return spans


def follow_classes(array: np.ndarray, code: tuple, conversation: tuple | None, depth: int,
                   given: tuple | None = None) -> np.ndarray:
    """(n, F) outputs (their arg-max biases added) -> (n,) index into FOLLOW_CLASSES of what
    the record's address does: a new address, its own reuse code, or the pair's
    conversation code (record k's pair, 1..K, or reversed, K+1..2K); with ``given`` (the
    follow span of the port decided first), + len(FOLLOW_CLASSES) where that port follows."""
    classes = np.where(array[:, code[0]:code[1]].argmax(axis=1) == 0, 0, 1)
    if conversation is not None:
        pair = array[:, conversation[0]:conversation[1]].argmax(axis=1)
        classes = np.where(pair == 0, classes, np.where(pair <= depth, 2, 3))
    if given is not None:
        classes = classes + len(FOLLOW_CLASSES) * (array[:, given[0] + 1] > array[:, given[0]])
    return classes


PATTERN_SCALE = 2.0         # pattern score: -PATTERN_SCALE * squared bit distance
CONDITIONAL_NUMBERS = {"byt": "pkt", "td": "pkt"}   # number -> the number it is mapped within
# bins of the parent: training quantiles (ties merged). Within a bin a record's bytes and
# duration are mapped by their rank alone, whatever its packet count in the bin: 16 (12
# bins on UGR'16: 2-3, 8-10, ..., 40+ packets) left bytes uncorrelated with packets inside
# the wide bins (real: Spearman 0.14-0.64); 64 (26 bins) leaves an in-bin correlation of
# 0.035 of training's records (16: 0.175; docs/model.md, session 19)
PARENT_BINS = 64
MIN_BIN_RECORDS = 200       # a bin with fewer outputs or training records uses the marginal map


def pattern_fields(codec) -> dict[str, tuple[int, int]]:
    """field -> (start, stop) of the small ``bits`` fields (flags, ToS, protocol) decoded
    as one of the bit patterns seen in training."""
    return {name: (codec.feature_slices[name].start, codec.feature_slices[name].stop)
            for name, t in codec.transforms.items() if t.name == "bits" and t.width <= 8}


def to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """(n,) unsigned integers -> (n, width) float bits, most significant first (the
    ``bits`` transform's encoding)."""
    return BitsTransform(width).encode(np.asarray(values, np.int64)).astype(np.float64)


def from_bits(bits: np.ndarray) -> np.ndarray:
    """(n, width) bits (rounded at 0.5) -> (n,) unsigned integers (the ``bits`` transform's
    decoding)."""
    return BitsTransform(np.shape(bits)[1]).decode(bits)[0]


def pattern_scores(bits: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """(n, w) soft bits, (m, w) patterns -> (n, m) scores -PATTERN_SCALE * distance^2."""
    d2 = ((bits ** 2).sum(1)[:, None] + (patterns ** 2).sum(1)[None, :]
          - 2.0 * bits @ patterns.T)
    return -PATTERN_SCALE * np.maximum(d2, 0.0)


def quantile_map(u: np.ndarray, model_q: np.ndarray, train_q: np.ndarray,
                 draws: np.ndarray | float) -> np.ndarray:
    """Outputs -> their rank among the model's outputs (``model_q``: GRID quantiles) -> the
    training value at that rank; ranks of a repeated output value (a tie) are spread by
    ``draws`` (uniforms) over the tie's share (randomised PIT)."""
    lo = np.searchsorted(model_q, u, side="left")
    hi = np.searchsorted(model_q, u, side="right")
    tied = hi - lo > 1
    grid = np.linspace(0.0, 1.0, GRID)
    p = np.interp(u, model_q, grid)
    if tied.any():
        draw = draws[tied] if np.ndim(draws) else draws
        p[tied] = (lo[tied] + draw * (hi[tied] - lo[tied] - 1)) / (GRID - 1)
    return np.interp(p, grid, train_q)


def parent_edges(parent_reference: np.ndarray, parent_values: np.ndarray,
                 bins: int = PARENT_BINS) -> np.ndarray:
    """Bin edges in the parent's encoded space: between the encodings of the training
    values on either side of each of ``bins`` training quantiles of the decoded values
    (so a bin holds whole values, however their encodings are jittered)."""
    cuts = np.unique(np.quantile(parent_values, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = []
    for cut in cuts:
        below, above = parent_reference[parent_values < cut], parent_reference[parent_values >= cut]
        if len(below) and len(above):
            edges.append((below.max() + above.min()) / 2.0)
    return np.asarray(edges, dtype=np.float64)


TOKEN_ROUNDS = 100          # fixed-point rounds of the token offset fit
TOKEN_LIMIT = 12.0          # |log-prior offset| bound
TOKEN_SAMPLE = 10_000       # model outputs used for the token fit
# kernel widths tried beyond the decoder's own; up to 0.8 so that a model crowding one
# protocol still reaches the next (UGR'16: TCP-UDP squared distance 2.4, beyond the
# cutoff 2 tau^2 ln 1e3 = 2.2 at tau 0.4, which left the stream 87 % TCP against 79 %)
TOKEN_TEMPERATURES = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
TOKEN_TOLERANCE = 0.1       # L1 error of the token frequencies that is good enough


ADDRESS_MIN_COUNT = 10      # an address training's 'new' records use this often is in the vocabulary
ADDRESS_ROUNDS = 30         # fixed-point rounds of the address offset fit
ADDRESS_SAMPLE = 10_000     # snapped model outputs used for the offset fit
ADDRESS_TAU = 0.5           # kernel width over the soft bit distance (bits in [0, 1])
ADDRESS_CHUNK = 4096


def address_bits(values: np.ndarray) -> np.ndarray:
    """(n,) IPv4 integers -> (n, 32) float bits, most significant first."""
    return to_bits(values, 32)


def bits_address(bits: np.ndarray) -> np.ndarray:
    """(n, 32) bits (rounded at 0.5) -> (n,) IPv4 integers."""
    return from_bits(bits)


class AddressVocabulary:
    """Frequent training addresses and the snapping rule above."""

    def __init__(self, addresses: np.ndarray, counts: np.ndarray, threshold: float,
                 offsets: np.ndarray | None = None):
        self.addresses = np.asarray(addresses, np.int64)                     # (V,)
        self.counts = np.asarray(counts, np.float64)                         # (V,)
        self.threshold = float(threshold)
        self.vectors = address_bits(self.addresses)                          # (V, 32)
        self._norms = (self.vectors ** 2).sum(axis=1)
        self.set_offsets(np.zeros(len(self.addresses)) if offsets is None else offsets)

    def set_offsets(self, offsets: np.ndarray) -> None:
        """(V,) log-prior offsets added to log(count) in the snapping weights."""
        self.offsets = np.asarray(offsets, np.float64)
        self._log_counts = np.log(self.counts) + self.offsets

    def distances(self, bits: np.ndarray) -> np.ndarray:
        """(b, 32) soft bits -> (b, V) squared distances to the vocabulary addresses."""
        return (bits ** 2).sum(1)[:, None] + self._norms[None, :] - 2.0 * bits @ self.vectors.T

    @staticmethod
    def _reach(d2: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(b, V) squared distances -> (them clipped at 0, (b, V) within the kernel's reach:
        at most 1000x less likely than the nearest address by distance, the kernel's
        2 tau^2)."""
        d2 = np.maximum(d2, 0.0)
        scale = 2.0 * ADDRESS_TAU ** 2
        return d2, d2 <= d2.min(axis=1, keepdims=True) + scale * np.log(1e3), scale

    def log_weights(self, bits: np.ndarray) -> np.ndarray:
        """(b, 32) soft bits -> (b, V) unnormalised log snapping weights, -inf beyond the
        kernel's reach."""
        d2, near, scale = self._reach(self.distances(bits))                    # (b, V)
        return np.where(near, self._log_counts[None, :] - d2 / scale, -np.inf)

    @classmethod
    def from_reference(cls, addresses: np.ndarray) -> "AddressVocabulary":
        values, counts = np.unique(np.asarray(addresses, np.int64), return_counts=True)
        keep = counts >= ADDRESS_MIN_COUNT
        return cls(values[keep], counts[keep], threshold=-np.inf)

    def margins(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 32) soft bits -> (known (n,) bool: rounded bits are a vocabulary address,
        margin (n,): nearest vocabulary distance^2 minus the rounded bits' distance^2)."""
        known = np.isin(bits_address(bits), self.addresses)
        nearest = np.empty(len(bits))
        for start in range(0, len(bits), ADDRESS_CHUNK):
            nearest[start:start + ADDRESS_CHUNK] = self.distances(
                bits[start:start + ADDRESS_CHUNK]).min(axis=1)
        return known, nearest - self._own(bits)

    @staticmethod
    def _own(bits: np.ndarray) -> np.ndarray:
        """(n,) squared distance of soft bits to their rounding."""
        return ((bits - (bits > 0.5)) ** 2).sum(axis=1)

    def snap(self, bits: np.ndarray, uniforms: np.ndarray | None) -> np.ndarray:
        """(n, 32) soft bits -> copy with the snapped rows set to their address's bits."""
        bits = np.array(bits, dtype=np.float64)
        if not len(self.addresses) or not np.isfinite(self.threshold):
            return bits
        known = np.isin(bits_address(bits), self.addresses)
        for start in range(0, len(bits), ADDRESS_CHUNK):      # one distance matrix a chunk
            chunk = np.arange(start, min(start + ADDRESS_CHUNK, len(bits)))
            d2 = self.distances(bits[chunk])                                  # (b, V)
            margin = d2.min(axis=1) - self._own(bits[chunk])
            snapped = ~known[chunk] & (margin <= self.threshold)
            part, d2 = chunk[snapped], d2[snapped]
            if not len(part):
                continue
            draw = np.full(len(part), 0.5) if uniforms is None else uniforms[part]
            bits[part] = self.vectors[self._draw(d2, draw)]
        return bits

    def _draw(self, d2: np.ndarray, draw: np.ndarray) -> np.ndarray:
        """(s, V) squared distances, (s,) uniforms -> (s,) vocabulary rows drawn from the
        snapping weights (``log_weights``). Only the addresses within the kernel's reach
        have weight, a handful of the V per row, so the weights are laid out per row over
        those (in address order; an address out of reach adds exactly 0 to a cumulative
        sum): the same draw as over all V columns, at a fraction of the exps and sums."""
        d2, near, scale = self._reach(d2)                                     # (s, V)
        rows, cols = np.nonzero(near)                  # row-major: addresses in order
        counts = np.bincount(rows, minlength=len(d2))                         # (s,) >= 1
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        logw = np.full((len(d2), counts.max()), -np.inf)                      # (s, reach)
        logw[rows, slot] = self._log_counts[cols] - d2[rows, cols] / scale
        address = np.zeros(logw.shape, dtype=np.int64)
        address[rows, slot] = cols
        weights = np.exp(logw - logw.max(axis=1, keepdims=True))
        cumulative = np.cumsum(weights, axis=1)
        k = (cumulative <= draw[:, None] * cumulative[:, -1:]).sum(axis=1)    # (s,)
        last = len(self.addresses) - 1                 # (a draw at the very top: as before)
        return np.where(k < counts, address[np.arange(len(d2)), np.minimum(k, logw.shape[1] - 1)],
                        last)

    def state(self) -> dict:
        return {"addresses": self.addresses.tolist(), "counts": self.counts.astype(int).tolist(),
                "threshold": self.threshold if np.isfinite(self.threshold) else None,
                "offsets": self.offsets.round(6).tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "AddressVocabulary":
        threshold = state.get("threshold")
        return cls(state["addresses"], state["counts"],
                   -np.inf if threshold is None else threshold, state.get("offsets"))


def fit_address_vocabulary(outputs_bits: np.ndarray, new_rows: np.ndarray,
                           reference_addresses: np.ndarray, reference_new: np.ndarray
                           ) -> tuple[AddressVocabulary, dict]:
    """The vocabulary of the training addresses and the threshold that gives the model's
    'new'-coded outputs the training share of vocabulary addresses."""
    vocabulary = AddressVocabulary.from_reference(reference_addresses[reference_new])
    target = float(np.isin(reference_addresses[reference_new], vocabulary.addresses).mean())
    known, margin = vocabulary.margins(outputs_bits[new_rows])
    natural = float(known.mean()) if len(known) else 0.0
    extra = (target - natural) / max(1.0 - natural, EPS)
    report = {"vocabulary": int(len(vocabulary.addresses)), "training_share": round(target, 4),
              "model_share": round(natural, 4)}
    if extra > 0 and (~known).any():
        vocabulary.threshold = float(np.quantile(margin[~known], min(extra, 1.0)))
        snapped = outputs_bits[new_rows][~known & (margin <= vocabulary.threshold)]
        before = snapped_frequencies(vocabulary, snapped)
        vocabulary.set_offsets(fit_address_offsets(vocabulary, snapped))
        after = snapped_frequencies(vocabulary, snapped)
        goal = vocabulary.counts / vocabulary.counts.sum()
        report.update(l1_error_before=round(float(np.abs(before - goal).sum()), 4),
                      l1_error=round(float(np.abs(after - goal).sum()), 4))
    report["threshold"] = vocabulary.threshold if np.isfinite(vocabulary.threshold) else None
    return vocabulary, report


def snapped_frequencies(vocabulary: AddressVocabulary, bits: np.ndarray) -> np.ndarray:
    """(V,) expected share of each vocabulary address among ``bits`` snapped."""
    total = np.zeros(len(vocabulary.addresses))
    for start in range(0, len(bits), ADDRESS_CHUNK):
        logw = vocabulary.log_weights(bits[start:start + ADDRESS_CHUNK])
        weights = np.exp(logw - logw.max(axis=1, keepdims=True))
        total += (weights / weights.sum(axis=1, keepdims=True)).sum(axis=0)
    return total / max(len(bits), 1)


def fit_address_offsets(vocabulary: AddressVocabulary, bits: np.ndarray) -> np.ndarray:
    """(V,) log-prior offsets with which the snapped outputs ``bits`` land on each
    vocabulary address about as often as training's 'new' records do (the same
    fixed point as the token offsets). Without them the kernel piles the outputs onto the
    few hosts nearest the model's average bits."""
    log_target = np.log(vocabulary.counts / vocabulary.counts.sum() + EPS)
    offsets = np.zeros(len(vocabulary.addresses))
    if not len(bits):
        return offsets
    sample = bits[np.linspace(0, len(bits) - 1, min(ADDRESS_SAMPLE, len(bits))).round().astype(int)]
    for _ in range(ADDRESS_ROUNDS):
        vocabulary.set_offsets(offsets)
        expected = snapped_frequencies(vocabulary, sample)
        offsets = np.clip(offsets + log_target - np.log(expected + EPS), -TOKEN_LIMIT, TOKEN_LIMIT)
    vocabulary.set_offsets(np.zeros(len(offsets)))
    return offsets


def token_fields(codec) -> dict[str, int]:
    """field -> first feature column of the fields decoded by a token kernel decoder."""
    return {name: codec.feature_slices[name].start for name, t in codec.transforms.items()
            if hasattr(t, "prior_offset")}


def fit_tokens(decoder, queries: np.ndarray, target: np.ndarray
               ) -> tuple[np.ndarray, float, float]:
    """(n, d) model queries, (V,) target token frequencies -> (offsets (V,), temperature,
    L1 frequency error): the smallest of ``TOKEN_TEMPERATURES`` (the decoder's own first)
    whose fitted offsets bring the expected frequencies within ``TOKEN_TOLERANCE`` of the
    target (the best one if none does). A model whose outputs crowd one token leaves the
    others beyond the kernel's cutoff at the decoder's own temperature, where no prior
    reaches them; a wider kernel lets the offsets act."""
    best = None
    for temperature in sorted({decoder.temperature, *TOKEN_TEMPERATURES}):
        if temperature < decoder.temperature:
            continue
        offset = fit_token_offsets(decoder, queries, target, temperature)
        error = float(np.abs(_expected(decoder, queries, offset, temperature) - target).sum())
        if best is None or error < best[2]:
            best = (offset, temperature, error)
        if error <= TOKEN_TOLERANCE:
            break
    return best


def fit_token_offsets(decoder, queries: np.ndarray, target: np.ndarray,
                      temperature: float | None = None) -> np.ndarray:
    """(n, d) model queries, (V,) target token frequencies -> (V,) log-prior offsets with
    which the decoder's expected token frequencies over the queries match the target."""
    logw = decoder.log_weights(np.clip(queries, 0.0, 1.0), None, temperature)  # (n, V)
    logw = logw - logw.max(axis=1, keepdims=True)
    log_target = np.log(np.asarray(target, dtype=np.float64) + EPS)
    offset = np.zeros(logw.shape[1])
    for _ in range(TOKEN_ROUNDS):
        weights = np.exp(logw + offset)                                      # (n, V)
        expected = (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)
        offset = np.clip(offset + log_target - np.log(expected + EPS), -TOKEN_LIMIT, TOKEN_LIMIT)
    return offset


def fit_biases(outputs: np.ndarray, target: np.ndarray, limit: float = BIAS_LIMIT
               ) -> np.ndarray:
    """(n, m) outputs, (m,) target class frequencies -> (m,) biases with which
    ``argmax(outputs + bias)`` has about the target frequencies.

    Coordinate sweeps: the most frequent target class keeps bias 0 (the arg-max only sees
    differences); every other class in turn, rarest last, gets the bias that makes it win on
    exactly its target share of the rows, the others' biases held (a quantile of the margin
    it needs to win). A model's outputs sit near the one-hot corners, so each class wins by
    almost the same margin everywhere: a gradient step on the frequencies barely moves until
    it crosses that margin and then flips every row at once; the quantile lands inside it."""
    outputs = np.asarray(outputs, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n, m = outputs.shape
    anchor = int(np.argmax(target))
    bias = np.zeros(m)
    scores = outputs.copy()                                              # (n, m) outputs + bias
    best, best_error = bias.copy(), np.abs(np.bincount(scores.argmax(axis=1), minlength=m) / n
                                           - target).sum()
    for _sweep in range(BIAS_SWEEPS):
        for j in np.argsort(-target, kind="stable"):
            if j == anchor:
                continue
            scores[:, j] = -np.inf
            margin = scores.max(axis=1) - outputs[:, j]                  # (n,) j wins above it
            bias[j] = -limit if target[j] <= 0 else np.clip(np.quantile(margin, target[j]),
                                                            -limit, limit)
            scores[:, j] = outputs[:, j] + bias[j]
        error = np.abs(np.bincount(scores.argmax(axis=1), minlength=m) / n - target).sum()
        if error < best_error:
            best, best_error = bias.copy(), error
    return best


class OutputCalibration:
    def __init__(self, numeric: dict, biases: dict, meta: dict | None = None,
                 tokens: dict | None = None, addresses: dict | None = None,
                 patterns: dict | None = None, conditional: dict | None = None,
                 ports: dict | None = None, runs: dict | None = None,
                 regimes: dict | None = None, follows: dict | None = None):
        # field -> (column, model quantiles (GRID,), training quantiles (GRID,))
        self.numeric = {k: (int(c), np.asarray(mq, np.float64), np.asarray(rq, np.float64))
                        for k, (c, mq, rq) in numeric.items()}
        # field -> (start, stop, bias (stop - start,))
        self.biases = {k: (int(a), int(b), np.asarray(v, np.float64))
                       for k, (a, b, v) in biases.items()}
        # field -> (V,) log-prior offsets of its token decoder
        self.tokens = {k: (np.asarray(v, np.float64), float(t))
                       for k, (v, t) in (tokens or {}).items()}
        # field -> ((start, stop) of its 32 bits, AddressVocabulary)
        self.addresses = {k: (tuple(span), vocab) for k, (span, vocab) in (addresses or {}).items()}
        # field -> (start, stop, patterns (m,) values, bias (m,))
        self.patterns = {k: (int(a), int(b), np.asarray(v, np.int64), np.asarray(w, np.float64))
                         for k, (a, b, v, w) in (patterns or {}).items()}
        self._pattern_bits = {k: to_bits(v, b - a) for k, (a, b, v, _w) in self.patterns.items()}
        # number -> (parent, parent column, edges (B-1,), [(model q, training q) or None] * B)
        self.conditional = {k: (parent, int(column), np.asarray(edges, np.float64),
                                [None if m is None else (np.asarray(m[0], np.float64),
                                                         np.asarray(m[1], np.float64))
                                 for m in maps])
                            for k, (parent, column, edges, maps) in (conditional or {}).items()}
        # port field -> (65536 >> BUCKET_SHIFT,) training records of ranged ports per bucket
        self.ports = {k: np.asarray(v, np.int64) for k, v in (ports or {}).items()}
        # token field -> correlation of its consecutive draws (Gaussian AR(1) copula)
        self.runs = {k: float(v) for k, v in (runs or {}).items()}
        # "correlation" / "persistence" -> codec part -> the model's starting-noise
        # dependence over the horizon (flowdiff.model.regimes; fitted by ``flowdiff
        # calibrate`` before the rollout the rest is fitted on: it shapes the model's
        # outputs, not their decoding)
        self.regimes = {kind: {k: float(v) for k, v in values.items()}
                        for kind, values in (regimes or {}).items()}
        # 'port.follow' -> (follow span, own code span, conversation span or None, depth K,
        # (classes, width) biases: one row per class of the record's address, given span:
        # the follow span of the port decided first, whose decision splits the classes, or
        # None), applied in order
        self.follows = {k: (tuple(entry[0]), tuple(entry[1]), None if entry[2] is None else tuple(entry[2]),
                            int(entry[3]), np.asarray(entry[4], np.float64),
                            None if len(entry) < 6 or entry[5] is None else tuple(entry[5]))
                        for k, entry in (follows or {}).items()}
        self.meta = dict(meta or {})
        # uniform numbers per record used by ``apply``: one per number field, one per address
        self.draws = len(self.numeric) + len(self.addresses)

    @classmethod
    def fit(cls, codec, outputs: np.ndarray, reference: np.ndarray,
            meta: dict | None = None, horizon: int | None = None) -> "OutputCalibration":
        """``outputs`` (n, F): the model's raw outputs in [0, 1], consecutive records in
        blocks of ``horizon`` (None: one sequence); ``reference`` (m, F): the encoded
        training records, in time order."""
        outputs = np.asarray(outputs, dtype=np.float64)
        reference = np.asarray(reference)
        if outputs.ndim != 2 or outputs.shape[1] != codec.width or reference.shape[1:] != (codec.width,):
            raise ValueError(f"calibration needs (n, {codec.width}) outputs and reference, got "
                             f"{outputs.shape} and {reference.shape}")
        probabilities = np.linspace(0.0, 1.0, GRID)
        numeric = {name: (column, np.quantile(outputs[:, column], probabilities),
                          np.quantile(reference[:, column].astype(np.float64), probabilities))
                   for name, column in numeric_columns(codec).items()}
        conditional = fit_conditional(codec, numeric, outputs, reference)
        biases, report = {}, {}
        patterns = {}
        for name, (start, stop) in pattern_fields(codec).items():
            values, counts = np.unique(from_bits(reference[:, start:stop]), return_counts=True)
            vectors = to_bits(values, stop - start)
            scores = pattern_scores(outputs[:, start:stop], vectors)
            bias = fit_biases(scores, counts / counts.sum(), PATTERN_SCALE * (stop - start))
            patterns[name] = (start, stop, values, bias)
            order = np.argsort(-counts)
            report[name] = {"patterns": [int(v) for v in values[order[:4]]],
                            "training": _top((counts / counts.sum())[order]),
                            "model": _top(_frequencies(from_bits(outputs[:, start:stop]), values)[order]),
                            "calibrated": _top(np.bincount((scores + bias).argmax(axis=1),
                                                           minlength=len(values))[order] / len(outputs))}
        # The pair's conversation code first: where it is not 0 it decides both addresses, so
        # the addresses' own codes matter (and are fitted) only on the other records.
        spans = follow_spans(codec)
        blocks = sorted(((name, span) for name, span in argmax_blocks(codec).items() if name not in spans),
                        key=lambda item: not item[0].endswith(".conversation"))
        outside, reference_outside = np.ones(len(outputs), bool), np.ones(len(reference), bool)
        for name, (start, stop) in blocks:
            width = stop - start
            rows, reference_rows = ((outside, reference_outside) if name in codec.reuse_fields
                                    else (slice(None), slice(None)))
            target = np.bincount(reference[reference_rows, start:stop].argmax(axis=1),
                                 minlength=width) / max(len(reference[reference_rows]), 1)
            before = np.bincount(outputs[rows, start:stop].argmax(axis=1),
                                 minlength=width) / max(len(outputs[rows]), 1)
            bias = fit_biases(outputs[rows, start:stop], target)
            after = np.bincount((outputs[rows, start:stop] + bias).argmax(axis=1),
                                minlength=width) / max(len(outputs[rows]), 1)
            biases[name] = (start, stop, bias)
            report[name] = {"training": _top(target), "model": _top(before),
                            "calibrated": _top(after)}
            if name.endswith(".conversation"):
                outside = (outputs[:, start:stop] + bias).argmax(axis=1) == 0
                reference_outside = reference[:, start:stop].argmax(axis=1) == 0
        follows = {}
        first = next(iter(spans.values()), (None,))[0]   # the port decided first
        for name, (span, code, conversation, depth) in spans.items():
            given = None if span == first else first
            follows[name], report[name] = fit_follow_biases(
                outputs, reference, span, code, conversation, depth, biases, follows, given)
        tokens = {}
        sample = outputs[np.linspace(0, len(outputs) - 1, min(TOKEN_SAMPLE, len(outputs))
                                     ).round().astype(int)]
        for name, start in token_fields(codec).items():
            transform = codec.transforms[name]
            decoder, dim = transform.table.decoder, transform.table.dim
            rows = decoder.exact.rows(np.ascontiguousarray(reference[:, start:start + dim],
                                                           dtype=np.float32))
            rows = rows[rows >= 0]
            target = np.bincount(rows, minlength=len(decoder.vectors)) / max(len(rows), 1)
            queries = sample[:, start:start + dim]
            before = _expected(decoder, queries, None, None)
            offset, temperature, error = fit_tokens(decoder, queries, target)
            tokens[name] = (offset, temperature)
            after = _expected(decoder, queries, offset, temperature)
            report[name] = {"temperature": temperature, "l1_error": round(error, 4),
                            "l1_error_before": round(float(np.abs(before - target).sum()), 4),
                            "top_tokens": [transform.table.names[i] for i in np.argsort(-target)[:4]],
                            "training": _top(np.sort(target)[::-1]),
                            "model": _top(before[np.argsort(-target)]),
                            "calibrated": _top(after[np.argsort(-target)])}
        addresses = {}
        # a record in a conversation (its pair's code not 0) copies both addresses: not new
        paired, reference_paired = ~outside, ~reference_outside
        for name in codec.reuse_fields:
            field_start = codec.feature_slices[name].start
            code_stop = field_start + codec.transforms[name].code_width
            span = (field_start + codec.transforms[name].bits_start, codec.feature_slices[name].stop)
            _, _, bias = biases[name]
            new_rows = ((outputs[:, field_start:code_stop] + bias).argmax(axis=1) == 0) & ~paired
            reference_new = (reference[:, field_start:code_stop].argmax(axis=1) == 0) & ~reference_paired
            vocabulary, report[f"{name}_addresses"] = fit_address_vocabulary(
                outputs[:, span[0]:span[1]], new_rows,
                bits_address(reference[:, span[0]:span[1]]), reference_new)
            addresses[name] = (span, vocabulary)
        meta = dict(meta or {})
        meta.update(records=int(len(outputs)), argmax_frequencies=report)
        ports = {}
        for name, start in token_fields(codec).items():
            transform = codec.transforms[name]
            if hasattr(transform, "set_range_buckets"):
                values = from_bits(reference[:, start + transform.dim:
                                             start + transform.dim + transform.bits.width])
                values = values[transform.ranged_ports(values)]
                ports[name] = np.bincount(values >> BUCKET_SHIFT, minlength=65536 >> BUCKET_SHIFT)
        runs = {}
        for name, start in token_fields(codec).items():
            runs[name], report[f"{name}_runs"] = fit_token_runs(
                codec.transforms[name], tokens[name], outputs[:, start:start + codec.transforms[name].table.dim],
                reference[:, start:start + codec.transforms[name].table.dim], horizon)
        return cls(numeric, biases, meta, tokens, addresses, patterns, conditional, ports, runs,
                   follows=follows)

    def apply(self, array: np.ndarray, uniforms: np.ndarray | None) -> np.ndarray:
        """(n, F) outputs, (n, draws) uniforms in [0, 1) -> (n, F) calibrated copy."""
        raw = np.asarray(array, dtype=np.float64)
        out = raw.copy()
        draws = {name: (0.5 if uniforms is None else uniforms[:, i])
                 for i, name in enumerate(self.numeric)}
        for name, (column, model_q, train_q) in self.numeric.items():
            out[:, column] = quantile_map(raw[:, column], model_q, train_q, draws[name])
        for name, (parent, parent_column, edges, maps) in self.conditional.items():
            column = self.numeric[name][0]
            bins = np.searchsorted(edges, out[:, parent_column], side="right")
            for b, pair in enumerate(maps):
                rows = np.flatnonzero(bins == b)
                if pair is not None and len(rows):
                    draw = draws[name] if np.isscalar(draws[name]) else draws[name][rows]
                    out[rows, column] = quantile_map(raw[rows, column], *pair, draw)
        for name, (start, stop, _values, bias) in self.patterns.items():
            vectors = self._pattern_bits[name]                               # (m, width)
            chosen = (pattern_scores(out[:, start:stop], vectors) + bias).argmax(axis=1)
            out[:, start:stop] = vectors[chosen]
        for start, stop, bias in self.biases.values():
            out[:, start:stop] += bias
        for (start, stop), code, conversation, depth, bias, given in self.follows.values():
            out[:, start:stop] += bias[follow_classes(out, code, conversation, depth, given)]
        for i, ((start, stop), vocabulary) in enumerate(self.addresses.values()):
            draws = None if uniforms is None else uniforms[:, len(self.numeric) + i]
            out[:, start:stop] = vocabulary.snap(out[:, start:stop], draws)
        return out

    def correlate(self, uniforms: np.ndarray, draw_slices: dict, streams: int) -> np.ndarray:
        """(S*H, draws) per-record uniforms, stream-major -> a copy in which each token
        field's draw is correlated along each stream's H records (``runs``)."""
        if not self.runs:
            return uniforms
        uniforms = np.array(uniforms)
        for name, rho in self.runs.items():
            if name in draw_slices and rho > 0:
                column = draw_slices[name].start
                uniforms[:, column] = ar1_uniforms(uniforms[:, column].reshape(streams, -1),
                                                   rho).reshape(-1)
        return uniforms

    PARTS = ("numbers", "conditional", "patterns", "reuse", "tokens", "runs", "ports", "addresses")

    def subset(self, parts) -> "OutputCalibration":
        """A copy with only some of ``PARTS`` (for ablations): numbers = the quantile maps,
        conditional = the numbers mapped within their parent's bins (needs numbers),
        patterns = the bit-pattern decoding, reuse = the arg-max biases, tokens = the token
        offsets, runs = the correlated token draws, ports = the ranged ports' distribution,
        addresses = the snapping."""
        unknown = set(parts) - set(self.PARTS)
        if unknown:
            raise ValueError(f"calibration parts: expected some of {self.PARTS}, got {sorted(unknown)}")
        return OutputCalibration(self.numeric if "numbers" in parts else {},
                                 self.biases if "reuse" in parts else {}, self.meta,
                                 self.tokens if "tokens" in parts else {},
                                 self.addresses if "addresses" in parts else {},
                                 self.patterns if "patterns" in parts else {},
                                 self.conditional if {"numbers", "conditional"} <= set(parts) else {},
                                 self.ports if "ports" in parts else {},
                                 self.runs if "runs" in parts else {}, self.regimes,
                                 self.follows if "reuse" in parts else {})

    def state(self) -> dict:
        return {"numeric": {k: [c, mq.tolist(), rq.tolist()] for k, (c, mq, rq) in self.numeric.items()},
                "biases": {k: [a, b, v.tolist()] for k, (a, b, v) in self.biases.items()},
                "tokens": {k: [v.tolist(), t] for k, (v, t) in self.tokens.items()},
                "addresses": {k: [list(span), vocab.state()]
                              for k, (span, vocab) in self.addresses.items()},
                "patterns": {k: [a, b, v.tolist(), w.tolist()]
                             for k, (a, b, v, w) in self.patterns.items()},
                "ports": {k: v.tolist() for k, v in self.ports.items()},
                "runs": dict(self.runs),
                "regimes": {kind: dict(values) for kind, values in self.regimes.items()},
                "follows": {k: [list(span), list(code), None if pair is None else list(pair), depth,
                                bias.tolist(), None if given is None else list(given)]
                            for k, (span, code, pair, depth, bias, given) in self.follows.items()},
                "conditional": {k: [parent, column, edges.tolist(),
                                    [None if m is None else [m[0].tolist(), m[1].tolist()]
                                     for m in maps]]
                                for k, (parent, column, edges, maps) in self.conditional.items()},
                "meta": self.meta}

    @classmethod
    def from_state(cls, state: dict) -> "OutputCalibration":
        return cls({k: tuple(v) for k, v in state["numeric"].items()},
                   {k: tuple(v) for k, v in state["biases"].items()}, state.get("meta"),
                   state.get("tokens"),
                   {k: (span, AddressVocabulary.from_state(v))
                    for k, (span, v) in state.get("addresses", {}).items()},
                   state.get("patterns"), state.get("conditional"), state.get("ports"),
                   state.get("runs"), state.get("regimes"), state.get("follows"))


def fit_follow_biases(outputs: np.ndarray, reference: np.ndarray, span: tuple, code: tuple,
                      conversation: tuple | None, depth: int, biases: dict,
                      earlier: dict | None = None, given: tuple | None = None
                      ) -> tuple[tuple, dict]:
    """A port's follow code: one bias row per FOLLOW_CLASSES class, each fitted (as the
    arg-max blocks) on the records of that class, the class taken from the calibrated codes
    (``biases``, then the ``earlier`` ports' fitted follows) for the outputs and from the
    encodings for the reference; with ``given`` (the follow span of the port decided first)
    the classes are split by that port's decision too. A class with too few records of
    either keeps the bias fitted on all records."""
    start, stop = span
    calibrated = np.array(outputs)
    for a, b, bias in biases.values():
        calibrated[:, a:b] += bias
    for (a, b), own, pair, k, bias, before in (earlier or {}).values():
        calibrated[:, a:b] += bias[follow_classes(calibrated, own, pair, k, before)]
    mine = follow_classes(calibrated, code, conversation, depth, given)
    theirs = follow_classes(reference, code, conversation, depth, given)
    pooled = fit_biases(outputs[:, start:stop], _shares(reference[:, start:stop], stop - start))
    labels = list(FOLLOW_CLASSES)
    if given is not None:
        labels = [f"{label}, first port stays" for label in labels] + \
                 [f"{label}, first port follows" for label in labels]
    rows = np.tile(pooled, (len(labels), 1))
    report = {}
    for c, label in enumerate(labels):
        here, there = mine == c, theirs == c
        target = _shares(reference[there, start:stop], stop - start)
        if min(here.sum(), there.sum()) >= MIN_CLASS_RECORDS:
            rows[c] = fit_biases(outputs[here, start:stop], target)
        report[label] = {"records": round(float(here.mean()), 4),
                         "training_records": round(float(there.mean()), 4),
                         "training": _top(target),
                         "model": _top(_shares(outputs[here, start:stop], stop - start)),
                         "calibrated": _top(_shares(outputs[here, start:stop] + rows[c], stop - start))}
    return (span, code, conversation, depth, rows, given), report


def _shares(block: np.ndarray, width: int) -> np.ndarray:
    """(n, width) outputs -> (width,) share of rows whose arg-max is each class."""
    return np.bincount(block.argmax(axis=1), minlength=width) / max(len(block), 1)


def _expected(decoder, queries: np.ndarray, offset: np.ndarray | None,
              temperature: float | None) -> np.ndarray:
    """(V,) expected token frequencies of sampled decoding over the queries."""
    logw = decoder.log_weights(np.clip(queries, 0.0, 1.0), offset, temperature)
    weights = np.exp(logw - logw.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)


def fit_conditional(codec, numeric: dict, outputs: np.ndarray, reference: np.ndarray) -> dict:
    """CONDITIONAL_NUMBERS present in ``numeric`` -> their quantile maps within each bin of
    the parent's (calibrated) value: bytes within the flows of the same packet count keep
    bytes per packet and duration per packet as in training."""
    conditional = {}
    rng = np.random.default_rng(0)
    for name, parent in CONDITIONAL_NUMBERS.items():
        if name not in numeric or parent not in numeric:
            continue
        column, parent_column = numeric[name][0], numeric[parent][0]
        parent_out = quantile_map(outputs[:, parent_column], *numeric[parent][1:],
                                  rng.random(len(outputs)))
        parent_ref = reference[:, parent_column].astype(np.float64)
        # PARENT_BINS, or fewer for a small fit: a bin should hold twice MIN_BIN_RECORDS
        # of both the outputs and the training records, else it falls back to the marginal
        bins = int(np.clip(min(len(outputs), len(parent_ref)) // (2 * MIN_BIN_RECORDS), 2, PARENT_BINS))
        edges = parent_edges(parent_ref, codec.transforms[parent].decode(parent_ref[:, None])[0], bins)
        bins_out = np.searchsorted(edges, parent_out, side="right")
        bins_ref = np.searchsorted(edges, parent_ref, side="right")
        probabilities = np.linspace(0.0, 1.0, GRID)
        maps = []
        for b in range(len(edges) + 1):
            mine, theirs = outputs[bins_out == b, column], reference[bins_ref == b, column]
            maps.append(None if min(len(mine), len(theirs)) < MIN_BIN_RECORDS else
                        (np.quantile(mine, probabilities),
                         np.quantile(theirs.astype(np.float64), probabilities)))
        conditional[name] = (parent, parent_column, edges, maps)
    return conditional


RUN_RHOS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)   # token draw correlations tried
RUN_SAMPLE = 20_000         # consecutive model outputs used for the run fit


def ar1_uniforms(uniforms: np.ndarray, rho: float) -> np.ndarray:
    """(S, H) independent uniforms -> (S, H) uniforms, each still uniform, whose normal
    scores follow an AR(1) with correlation ``rho`` along H (a Gaussian copula)."""
    from scipy.special import ndtr, ndtri

    z = ndtri(np.clip(uniforms, 1e-12, 1 - 1e-12))                         # (S, H)
    out = np.empty_like(z)
    out[:, 0] = z[:, 0]
    scale = np.sqrt(1.0 - rho * rho)
    for t in range(1, z.shape[1]):
        out[:, t] = rho * out[:, t - 1] + scale * z[:, t]
    return ndtr(out)


def fit_token_runs(transform, token: tuple, outputs: np.ndarray, reference: np.ndarray,
                   horizon: int | None) -> tuple[float, dict]:
    """The draw correlation (one of RUN_RHOS) whose decoded tokens repeat the previous
    record's as often as training's do. Independent draws from each record's kernel
    posterior break the runs of one service a real trace has (a burst of web flows);
    correlated draws pick the same token wherever consecutive posteriors agree, and each
    draw stays uniform, so the token frequencies do not move."""
    decoder = transform.table.decoder
    offset, temperature = token
    rows = decoder.exact.rows(np.ascontiguousarray(reference, dtype=np.float32))
    target = float((rows[1:] == rows[:-1]).mean())
    block = horizon or len(outputs)
    n = min(len(outputs), max(block, RUN_SAMPLE // block * block))
    queries = np.clip(outputs[:n], 0.0, 1.0).astype(np.float32)
    independent = np.random.default_rng(0).random((n // block, block))
    rates = {}
    for rho in RUN_RHOS:
        drawn = decoder.decode(queries[:independent.size],
                               ar1_uniforms(independent, rho).reshape(-1), offset, temperature)
        drawn = drawn.reshape(-1, block)
        rates[rho] = float((drawn[:, 1:] == drawn[:, :-1]).mean())
    best = min(RUN_RHOS, key=lambda rho: (abs(rates[rho] - target), rho))
    return best, {"training_repeat": round(target, 4), "rho": best,
                  "repeat": {str(k): round(v, 4) for k, v in rates.items()}}


def _frequencies(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(m,) share of ``values`` equal to each of ``classes``."""
    return np.array([(values == c).mean() for c in classes])


def _top(frequencies: np.ndarray, n: int = 4) -> dict:
    """The first ``n`` classes' frequencies (for the report), rounded."""
    return {str(i): round(float(f), 4) for i, f in enumerate(frequencies[:n])}
