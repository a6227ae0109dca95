"""CTGAN (Xu et al., 2019; ``ctgan`` package) on the flow record table.

The table CTGAN sees, one row per record:

* continuous: log1p of ``td``, ``pkt``, ``byt`` and of the gap to the previous record's
  start (``iat``); ``srcport`` and ``dstport`` (CTGAN's mode-specific normalisation copes
  with their multi-modal shape);
* discrete: ``proto``, ``flags``, ``tos``, ``label`` and the four octets of each IP
  address (an address as one category would need one column per distinct address).

Sampled rows are mapped back (expm1, rounding, clipping to the schema's ranges) and start
times are rebuilt as a cumulative sum of the sampled gaps.

Installation note: ``pip install ctgan`` pulls rdt, whose metadata asks for pandas < 3 and
so would downgrade pandas. ``pip install --no-deps ctgan rdt Faker`` works with pandas 3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowdiff import schema
from flowdiff.baselines import BaselineError

log = logging.getLogger(__name__)

LOG_FIELDS = ("td", "pkt", "byt", "iat")
PORT_FIELDS = ("srcport", "dstport")
CATEGORY_FIELDS = ("proto", "flags", "tos", "label")
IP_FIELDS = ("srcip", "dstip")
OCTET_SHIFTS = (24, 16, 8, 0)


@dataclass(frozen=True)
class CtganConfig:
    epochs: int = 10
    batch_size: int = 500          # CTGAN needs a multiple of pac (10)
    train_records: int = 50_000    # most recent training records used (CTGAN is slow on CPU)
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise BaselineError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 10 or self.batch_size % 10:
            raise BaselineError(f"batch_size must be a positive multiple of 10 (CTGAN's pac), "
                                f"got {self.batch_size}")
        if self.train_records < 10:
            raise BaselineError(f"train_records must be >= 10, got {self.train_records}")


def _import_ctgan():
    try:
        from ctgan import CTGAN
    except ImportError as exc:
        raise BaselineError(
            "the CTGAN baseline needs the 'ctgan' package; install it with "
            "'pip install --no-deps ctgan rdt Faker' (a plain 'pip install ctgan' would "
            f"downgrade pandas to < 3 through rdt): {exc}") from exc
    return CTGAN


def to_ctgan_table(train: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Canonical table -> (CTGAN input table, names of its discrete columns)."""
    ts = train["ts"].to_numpy(float)
    out = {"iat": np.log1p(np.maximum(np.diff(ts, prepend=ts[0]), 0))}
    for c in ("td", "pkt", "byt"):
        if c in train.columns:
            out[c] = np.log1p(np.maximum(train[c].to_numpy(float), 0))
    for c in PORT_FIELDS:
        if c in train.columns:
            out[c] = train[c].to_numpy(float)
    discrete = []
    for c in CATEGORY_FIELDS:
        if c in train.columns:
            out[c] = train[c].astype(str).to_numpy(dtype=object)
            discrete.append(c)
    for c in IP_FIELDS:
        ip = train[c].to_numpy(np.uint32)
        for i, shift in enumerate(OCTET_SHIFTS):
            name = f"{c}_{i}"
            out[name] = ((ip >> shift) & 255).astype(str).astype(object)
            discrete.append(name)
    return pd.DataFrame(out), discrete


def from_ctgan_table(rows: pd.DataFrame, start: float, dtypes: dict[str, str]) -> pd.DataFrame:
    """CTGAN samples -> canonical table with the training table's columns."""
    iat = np.expm1(np.clip(rows["iat"].to_numpy(float), 0, None))
    out = {"ts": start + np.cumsum(iat) - iat[0]}
    if "td" in rows:
        out["td"] = np.expm1(np.clip(rows["td"].to_numpy(float), 0, None))
    for c in ("pkt", "byt"):
        if c in rows:
            out[c] = np.maximum(np.rint(np.expm1(rows[c].to_numpy(float))), 1).astype(np.int64)
    for c in PORT_FIELDS:
        if c in rows:
            out[c] = np.clip(np.rint(rows[c].to_numpy(float)), 0, 65535).astype(np.int64)
    for c in CATEGORY_FIELDS:
        if c in rows:
            out[c] = rows[c].to_numpy(dtype=object)
            if c != "label":
                out[c] = pd.to_numeric(pd.Series(out[c])).to_numpy(np.int64)
    for c in IP_FIELDS:
        ip = np.zeros(len(rows), dtype=np.uint64)
        for i, shift in enumerate(OCTET_SHIFTS):
            ip |= pd.to_numeric(rows[f"{c}_{i}"]).to_numpy(np.uint64) << np.uint64(shift)
        out[c] = ip.astype(np.uint32)
    table = pd.DataFrame(out)
    return schema.conform(table[[c for c in dtypes if c in table.columns]])


def sample_ctgan(train: pd.DataFrame, records: int, config: CtganConfig) -> pd.DataFrame:
    """Fit CTGAN on the last ``config.train_records`` training records and sample."""
    CTGAN = _import_ctgan()
    from flowdiff.model.rng import scoped_torch_seed

    if len(train) < 10:
        raise BaselineError(f"ctgan baseline needs at least 10 training records, "
                            f"got {len(train)}")
    if records < 1:
        raise BaselineError(f"records must be >= 1, got {records}")
    recent = train.iloc[-config.train_records:].reset_index(drop=True)
    table, discrete = to_ctgan_table(recent)
    with scoped_torch_seed(config.seed):  # CTGAN draws from torch's global RNG
        model = CTGAN(epochs=config.epochs, batch_size=config.batch_size, pac=10,
                      enable_gpu=False, verbose=False)
        model.set_random_state(config.seed)
        log.info("fitting CTGAN on %d records, %d epochs", len(table), config.epochs)
        model.fit(table, discrete_columns=discrete)
        rows = model.sample(records)
    dtypes = {c: str(recent[c].dtype) for c in recent.columns}
    return from_ctgan_table(rows, float(recent["ts"].iloc[0]), dtypes)
