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
                 tokens: dict | None = None):
        # field -> (column, model quantiles (GRID,), training quantiles (GRID,))
        self.numeric = {k: (int(c), np.asarray(mq, np.float64), np.asarray(rq, np.float64))
                        for k, (c, mq, rq) in numeric.items()}
        # field -> (start, stop, bias (stop - start,))
        self.biases = {k: (int(a), int(b), np.asarray(v, np.float64))
                       for k, (a, b, v) in biases.items()}
        # field -> (V,) log-prior offsets of its token decoder
        self.tokens = {k: (np.asarray(v, np.float64), float(t))
                       for k, (v, t) in (tokens or {}).items()}
        self.meta = dict(meta or {})
        self.draws = len(self.numeric)      # uniform numbers per record used by ``apply``

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
        meta = dict(meta or {})
        meta.update(records=int(len(outputs)), argmax_frequencies=report)
        return cls(numeric, biases, meta, tokens)

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
        return out

    def state(self) -> dict:
        return {"numeric": {k: [c, mq.tolist(), rq.tolist()] for k, (c, mq, rq) in self.numeric.items()},
                "biases": {k: [a, b, v.tolist()] for k, (a, b, v) in self.biases.items()},
                "tokens": {k: [v.tolist(), t] for k, (v, t) in self.tokens.items()},
                "meta": self.meta}

    @classmethod
    def from_state(cls, state: dict) -> "OutputCalibration":
        return cls({k: tuple(v) for k, v in state["numeric"].items()},
                   {k: tuple(v) for k, v in state["biases"].items()}, state.get("meta"),
                   state.get("tokens"))


def _expected(decoder, queries: np.ndarray, offset: np.ndarray | None,
              temperature: float | None) -> np.ndarray:
    """(V,) expected token frequencies of sampled decoding over the queries."""
    logw = decoder.log_weights(np.clip(queries, 0.0, 1.0), offset, temperature)
    weights = np.exp(logw - logw.max(axis=1, keepdims=True))
    return (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)


def _top(frequencies: np.ndarray, n: int = 4) -> dict:
    """The first ``n`` classes' frequencies (for the report), rounded."""
    return {str(i): round(float(f), 4) for i, f in enumerate(frequencies[:n])}
