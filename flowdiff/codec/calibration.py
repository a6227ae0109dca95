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
* **addresses** (the 32 bits of ``reuse_bits`` fields): a model writes a frequent host's 32
  bits with a few of them off, which decodes to an address nobody uses (the heavy hitters
  dissolve into thousands of invented hosts). The training addresses seen at least
  ``ADDRESS_MIN_COUNT`` times form a vocabulary; an output whose rounded bits are not in it
  moves to a vocabulary address (sampled by ``count * exp(-d^2 / 2 tau^2)`` over the soft
  bit distance d, tau = ``ADDRESS_TAU``) when that is at most ``threshold`` further than its
  own rounded bits. The threshold is fitted so the share of records on vocabulary addresses
  matches the training share; the rest keep their own (new) address.
* **arg-max blocks** (the reuse code of ``reuse_bits`` addresses, ``onehot`` fields): an
  additive bias per class, fitted so that the arg-max class frequencies over the model's
  outputs match the training frequencies (prior correction).

The calibration is part of the codec (``codec.json``, key ``calibration``); a codec without
one decodes as before. It is fitted for one model and one sampler (both recorded in it).
"""

from __future__ import annotations

import numpy as np

GRID = 1025                 # quantile grid points (probabilities k / (GRID - 1))
BIAS_ROUNDS = 500           # fixed-point rounds of the arg-max bias fit
BIAS_STEP = 0.2             # step of round r: BIAS_STEP / sqrt(1 + r)
BIAS_LIMIT = 4.0            # |bias| bound (outputs lie in [0, 1])
EPS = 1e-6


def argmax_blocks(codec) -> dict[str, tuple[int, int]]:
    """field -> (start, stop) feature columns whose arg-max is decoded: the reuse code of
    ``reuse_bits`` fields and whole ``onehot`` fields."""
    blocks = {}
    for name, transform in codec.transforms.items():
        start = codec.feature_slices[name].start
        if transform.name == "reuse_bits":
            blocks[name] = (start, start + transform.depth + 1)
        elif transform.name == "onehot" and transform.width > 1:
            blocks[name] = (start, start + transform.width)
    return blocks


def numeric_columns(codec) -> dict[str, int]:
    """field -> feature column of the width-1 number fields."""
    return {name: codec.feature_slices[name].start for name, t in codec.transforms.items()
            if t.name in ("quantile", "log_minmax", "minmax") and t.width == 1}


TOKEN_ROUNDS = 100          # fixed-point rounds of the token offset fit
TOKEN_LIMIT = 12.0          # |log-prior offset| bound
TOKEN_SAMPLE = 10_000       # model outputs used for the token fit
TOKEN_TEMPERATURES = (0.1, 0.15, 0.2, 0.3, 0.4)   # kernel widths tried beyond the decoder's own
TOKEN_TOLERANCE = 0.1       # L1 error of the token frequencies that is good enough


ADDRESS_MIN_COUNT = 20      # a training address seen this often is in the vocabulary
ADDRESS_TAU = 0.5           # kernel width over the soft bit distance (bits in [0, 1])
ADDRESS_CHUNK = 4096


def address_bits(values: np.ndarray) -> np.ndarray:
    """(n,) IPv4 integers -> (n, 32) float bits, most significant first."""
    shifts = np.arange(31, -1, -1, dtype=np.int64)
    return ((np.asarray(values, np.int64)[:, None] >> shifts) & 1).astype(np.float64)


def bits_address(bits: np.ndarray) -> np.ndarray:
    """(n, 32) bits (rounded at 0.5) -> (n,) IPv4 integers."""
    weights = (1 << np.arange(31, -1, -1, dtype=np.int64))
    return ((np.asarray(bits) > 0.5).astype(np.int64) * weights).sum(axis=1)


class AddressVocabulary:
    """Frequent training addresses and the snapping rule above."""

    def __init__(self, addresses: np.ndarray, counts: np.ndarray, threshold: float):
        self.addresses = np.asarray(addresses, np.int64)                     # (V,)
        self.counts = np.asarray(counts, np.float64)                         # (V,)
        self.threshold = float(threshold)
        self.vectors = address_bits(self.addresses)                          # (V, 32)
        self._norms = (self.vectors ** 2).sum(axis=1)
        self._log_counts = np.log(self.counts)

    @classmethod
    def from_reference(cls, addresses: np.ndarray) -> "AddressVocabulary":
        values, counts = np.unique(np.asarray(addresses, np.int64), return_counts=True)
        keep = counts >= ADDRESS_MIN_COUNT
        return cls(values[keep], counts[keep], threshold=-np.inf)

    def margins(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 32) soft bits -> (known (n,) bool: rounded bits are a vocabulary address,
        margin (n,): nearest vocabulary distance^2 minus the rounded bits' distance^2)."""
        known = np.isin(bits_address(bits), self.addresses)
        own = ((bits - (bits > 0.5)) ** 2).sum(axis=1)
        nearest = np.empty(len(bits))
        for start in range(0, len(bits), ADDRESS_CHUNK):
            part = bits[start:start + ADDRESS_CHUNK]
            d2 = (part ** 2).sum(1)[:, None] + self._norms[None, :] - 2.0 * part @ self.vectors.T
            nearest[start:start + ADDRESS_CHUNK] = d2.min(axis=1)
        return known, nearest - own

    def snap(self, bits: np.ndarray, uniforms: np.ndarray | None) -> np.ndarray:
        """(n, 32) soft bits -> copy with the snapped rows set to their address's bits."""
        bits = np.array(bits, dtype=np.float64)
        if not len(self.addresses) or not np.isfinite(self.threshold):
            return bits
        known, margin = self.margins(bits)
        rows = np.flatnonzero(~known & (margin <= self.threshold))
        scale = 2.0 * ADDRESS_TAU ** 2
        for start in range(0, len(rows), ADDRESS_CHUNK):
            part = rows[start:start + ADDRESS_CHUNK]
            q = bits[part]
            d2 = np.maximum((q ** 2).sum(1)[:, None] + self._norms[None, :]
                            - 2.0 * q @ self.vectors.T, 0.0)                  # (b, V)
            logw = self._log_counts[None, :] - d2 / scale
            near = d2 <= d2.min(axis=1, keepdims=True) + scale * np.log(1e3)
            weights = np.where(near, np.exp(logw - logw.max(axis=1, keepdims=True)), 0.0)
            cumulative = np.cumsum(weights, axis=1)
            draw = 0.5 if uniforms is None else uniforms[part, None]
            picked = np.minimum((cumulative <= draw * cumulative[:, -1:]).sum(axis=1),
                                len(self.addresses) - 1)
            bits[part] = self.vectors[picked]
        return bits

    def state(self) -> dict:
        return {"addresses": self.addresses.tolist(), "counts": self.counts.astype(int).tolist(),
                "threshold": self.threshold if np.isfinite(self.threshold) else None}

    @classmethod
    def from_state(cls, state: dict) -> "AddressVocabulary":
        threshold = state.get("threshold")
        return cls(state["addresses"], state["counts"],
                   -np.inf if threshold is None else threshold)


def fit_address_vocabulary(outputs_bits: np.ndarray, new_rows: np.ndarray,
                           reference_addresses: np.ndarray, reference_new: np.ndarray
                           ) -> tuple[AddressVocabulary, dict]:
    """The vocabulary of the training addresses and the threshold that gives the model's
    'new'-coded outputs the training share of vocabulary addresses."""
    vocabulary = AddressVocabulary.from_reference(reference_addresses)
    target = float(np.isin(reference_addresses[reference_new], vocabulary.addresses).mean())
    known, margin = vocabulary.margins(outputs_bits[new_rows])
    natural = float(known.mean()) if len(known) else 0.0
    extra = (target - natural) / max(1.0 - natural, EPS)
    if extra > 0 and (~known).any():
        vocabulary.threshold = float(np.quantile(margin[~known], min(extra, 1.0)))
    return vocabulary, {"vocabulary": int(len(vocabulary.addresses)),
                        "training_share": round(target, 4), "model_share": round(natural, 4),
                        "threshold": vocabulary.threshold if np.isfinite(vocabulary.threshold) else None}


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


def fit_biases(outputs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(n, m) outputs, (m,) target class frequencies -> (m,) biases with which
    ``argmax(outputs + bias)`` has about the target frequencies."""
    outputs = np.asarray(outputs, dtype=np.float64)
    m = outputs.shape[1]
    log_target = np.log(np.asarray(target, dtype=np.float64) + EPS)
    bias = np.zeros(m)
    best, best_error = bias.copy(), np.inf
    for step in range(BIAS_ROUNDS):
        observed = np.bincount((outputs + bias).argmax(axis=1), minlength=m) / len(outputs)
        error = np.abs(observed - np.exp(log_target)).sum()
        if error < best_error:
            best, best_error = bias.copy(), error
        bias = np.clip(bias + BIAS_STEP / np.sqrt(1.0 + step) * (log_target - np.log(observed + EPS)),
                       -BIAS_LIMIT, BIAS_LIMIT)
    return best


class OutputCalibration:
    def __init__(self, numeric: dict, biases: dict, meta: dict | None = None,
                 tokens: dict | None = None, addresses: dict | None = None):
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
        self.meta = dict(meta or {})
        # uniform numbers per record used by ``apply``: one per number field, one per address
        self.draws = len(self.numeric) + len(self.addresses)

    @classmethod
    def fit(cls, codec, outputs: np.ndarray, reference: np.ndarray,
            meta: dict | None = None) -> "OutputCalibration":
        """``outputs`` (n, F): the model's raw outputs in [0, 1]; ``reference`` (m, F): the
        encoded training records."""
        outputs = np.asarray(outputs, dtype=np.float64)
        reference = np.asarray(reference)
        if outputs.ndim != 2 or outputs.shape[1] != codec.width or reference.shape[1:] != (codec.width,):
            raise ValueError(f"calibration needs (n, {codec.width}) outputs and reference, got "
                             f"{outputs.shape} and {reference.shape}")
        probabilities = np.linspace(0.0, 1.0, GRID)
        numeric = {name: (column, np.quantile(outputs[:, column], probabilities),
                          np.quantile(reference[:, column].astype(np.float64), probabilities))
                   for name, column in numeric_columns(codec).items()}
        biases, report = {}, {}
        for name, (start, stop) in argmax_blocks(codec).items():
            width = stop - start
            target = np.bincount(reference[:, start:stop].argmax(axis=1),
                                 minlength=width) / len(reference)
            before = np.bincount(outputs[:, start:stop].argmax(axis=1), minlength=width) / len(outputs)
            bias = fit_biases(outputs[:, start:stop], target)
            after = np.bincount((outputs[:, start:stop] + bias).argmax(axis=1),
                                minlength=width) / len(outputs)
            biases[name] = (start, stop, bias)
            report[name] = {"training": _top(target), "model": _top(before),
                            "calibrated": _top(after)}
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
        for name in codec.reuse_fields:
            field_start = codec.feature_slices[name].start
            code_stop = field_start + codec.transforms[name].depth + 1
            span = (code_stop, codec.feature_slices[name].stop)
            _, _, bias = biases[name]
            new_rows = (outputs[:, field_start:code_stop] + bias).argmax(axis=1) == 0
            reference_new = reference[:, field_start:code_stop].argmax(axis=1) == 0
            vocabulary, report[f"{name}_addresses"] = fit_address_vocabulary(
                outputs[:, span[0]:span[1]], new_rows,
                bits_address(reference[:, span[0]:span[1]]), reference_new)
            addresses[name] = (span, vocabulary)
        meta = dict(meta or {})
        meta.update(records=int(len(outputs)), argmax_frequencies=report)
        return cls(numeric, biases, meta, tokens, addresses)

    def apply(self, array: np.ndarray, uniforms: np.ndarray | None) -> np.ndarray:
        """(n, F) outputs, (n, draws) uniforms in [0, 1) -> (n, F) calibrated copy."""
        out = np.array(array, dtype=np.float64)
        for i, (column, model_q, train_q) in enumerate(self.numeric.values()):
            u = out[:, column]
            lo = np.searchsorted(model_q, u, side="left")
            hi = np.searchsorted(model_q, u, side="right")
            tied = hi - lo > 1                          # u is a value the model repeats
            p = np.interp(u, model_q, np.linspace(0.0, 1.0, GRID))
            if tied.any():
                draw = 0.5 if uniforms is None else uniforms[tied, i]
                p[tied] = (lo[tied] + draw * (hi[tied] - lo[tied] - 1)) / (GRID - 1)
            out[:, column] = np.interp(p, np.linspace(0.0, 1.0, GRID), train_q)
        for start, stop, bias in self.biases.values():
            out[:, start:stop] += bias
        for i, ((start, stop), vocabulary) in enumerate(self.addresses.values()):
            draws = None if uniforms is None else uniforms[:, len(self.numeric) + i]
            out[:, start:stop] = vocabulary.snap(out[:, start:stop], draws)
        return out

    PARTS = ("numbers", "reuse", "tokens", "addresses")

    def subset(self, parts) -> "OutputCalibration":
        """A copy with only some of ``PARTS`` (for ablations): numbers = the quantile maps,
        reuse = the arg-max biases, tokens = the token offsets, addresses = the snapping."""
        unknown = set(parts) - set(self.PARTS)
        if unknown:
            raise ValueError(f"calibration parts: expected some of {self.PARTS}, got {sorted(unknown)}")
        return OutputCalibration(self.numeric if "numbers" in parts else {},
                                 self.biases if "reuse" in parts else {}, self.meta,
                                 self.tokens if "tokens" in parts else {},
                                 self.addresses if "addresses" in parts else {})

    def state(self) -> dict:
        return {"numeric": {k: [c, mq.tolist(), rq.tolist()] for k, (c, mq, rq) in self.numeric.items()},
                "biases": {k: [a, b, v.tolist()] for k, (a, b, v) in self.biases.items()},
                "tokens": {k: [v.tolist(), t] for k, (v, t) in self.tokens.items()},
                "addresses": {k: [list(span), vocab.state()]
                              for k, (span, vocab) in self.addresses.items()},
                "meta": self.meta}

    @classmethod
    def from_state(cls, state: dict) -> "OutputCalibration":
        return cls({k: tuple(v) for k, v in state["numeric"].items()},
                   {k: tuple(v) for k, v in state["biases"].items()}, state.get("meta"),
                   state.get("tokens"),
                   {k: (span, AddressVocabulary.from_state(v))
                    for k, (span, v) in state.get("addresses", {}).items()})


def _expected(decoder, queries: np.ndarray, offset: np.ndarray | None,
              temperature: float | None) -> np.ndarray:
    """(V,) expected token frequencies of sampled decoding over the queries."""
    logw = decoder.log_weights(np.clip(queries, 0.0, 1.0), offset, temperature)
    weights = np.exp(logw - logw.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)


def _top(frequencies: np.ndarray, n: int = 4) -> dict:
    """The first ``n`` classes' frequencies (for the report), rounded."""
    return {str(i): round(float(f), 4) for i, f in enumerate(frequencies[:n])}
