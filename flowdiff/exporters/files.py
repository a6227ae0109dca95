"""``file`` exporter: records to rotating files — canonical CSV, UGR'16-layout CSV, JSON lines
or Parquet — each written as ``*.part`` and renamed when complete (see ``rotation``).

Formats (all readable back by ``flowdiff.ingest.read_flows``):

* ``csv``: the canonical columns plus ``stream_id, seq``, header line, dotted IPs,
  ``.AP.SF`` flags, protocol numbers, ``ts`` in epoch seconds (as ``write_flows`` writes).
* ``ugr16``: UGR'16's own layout ``te,td,sa,da,sp,dp,pr,flg,fwd,stos,pkt,byt,label`` —
  ``te`` = flow END time ``YYYY-MM-DD HH:MM:SS`` in UTC, whole seconds (as in the dataset),
  protocol names, ``fwd`` 0; no ``stream_id``/``seq``. ``header: false`` matches the
  original header-less release files.
* ``jsonl``: one JSON object per record (text forms, microsecond times).
* ``parquet``: the canonical dtypes (uint32 IPs, uint8 flags), one row group per batch.

``gzip: true`` compresses CSV/JSON lines files (``.gz``) and selects gzip inside Parquet.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd

from flowdiff.exporters.base import ErrorCallback, Exporter, ExporterError, ExporterSettings
from flowdiff.exporters.rotation import RotatingFiles, RotationPolicy
from flowdiff.schema import conform, proto_name, to_text

SUFFIXES = {"csv": ".csv", "ugr16": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}


@dataclass
class FileConfig(ExporterSettings):
    DIRECTORY_KEYS = ("directory",)
    directory: str = "out"
    format: Literal["csv", "ugr16", "jsonl", "parquet"] = "csv"
    prefix: str = "flows"
    header: bool = True                   # csv / ugr16: write a header line in each file
    gzip: bool = False
    gzip_level: int = 6
    rotate_records: int | None = 1_000_000
    rotate_bytes: int | None = None       # bytes on disk (compressed size when gzip)
    rotate_seconds: float | None = 3600.0
    fsync: bool = True                    # fsync each file before renaming it into place

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if not self.directory:
            errors.append(("directory", "expected a directory path"))
        if not self.prefix or "/" in self.prefix:
            errors.append(("prefix", f"expected a file name prefix without '/', got {self.prefix!r}"))
        if not 1 <= self.gzip_level <= 9:
            errors.append(("gzip_level", f"expected 1..9, got {self.gzip_level!r}"))
        for name in ("rotate_records", "rotate_bytes", "rotate_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                errors.append((name, f"expected a value > 0 or null (no limit), got {value!r}"))
        return errors

    def policy(self) -> RotationPolicy:
        return RotationPolicy(self.rotate_records, self.rotate_bytes, self.rotate_seconds)


# ---------------------------------------------------------------- record encodings
_PROTO_NAMES = np.array([proto_name(p) for p in range(256)], dtype=object)  # 6 -> "TCP"


def text_columns(batch: pd.DataFrame) -> dict[str, np.ndarray]:
    """The canonical columns (conformed, plus ``stream_id, seq``) in their outside text forms
    (``schema.to_text``), as arrays."""
    table = to_text(conform(batch))
    return {name: table[name].to_numpy(dtype=object if name == "label" else None)
            for name in table.columns}


def ugr16_columns(batch: pd.DataFrame) -> dict[str, np.ndarray]:
    """The UGR'16 column layout (end time in whole UTC seconds, protocol names). A table
    without labels gets UGR'16's 12-column form, which has no label column at all."""
    text = text_columns(batch)
    n = len(batch)
    td = text.get("td", np.zeros(n))
    te = (text["ts"] + td).astype("datetime64[s]")
    columns = {
        "te": np.char.replace(te.astype(str), "T", " ").astype(object), "td": td,
        "sa": text["srcip"], "da": text["dstip"],
        "sp": text.get("srcport", np.zeros(n, dtype=np.int32)),
        "dp": text.get("dstport", np.zeros(n, dtype=np.int32)),
        "pr": _PROTO_NAMES[text["proto"]], "flg": text.get("flags", np.full(n, "......", dtype=object)),
        "fwd": np.zeros(n, dtype=np.int64), "stos": text.get("tos", np.zeros(n, dtype=np.uint8)),
        "pkt": text.get("pkt", np.zeros(n, dtype=np.int64)),
        "byt": text.get("byt", np.zeros(n, dtype=np.int64)),
    }
    if "label" in text:
        columns["label"] = text["label"]
    return columns


def csv_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """CSV rows without header: Arrow's writer (fast, no quotes), or pandas when a text value
    needs quoting (a comma or quote inside a label)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    arrays = {name: pa.array(v.tolist(), pa.string()) if v.dtype == object else pa.array(v)
              for name, v in columns.items()}
    sink = io.BytesIO()
    try:
        pa_csv.write_csv(pa.table(arrays), sink,
                         pa_csv.WriteOptions(include_header=False, quoting_style="none"))
        return sink.getvalue()
    except pa.ArrowInvalid:
        return pd.DataFrame(columns).to_csv(index=False, header=False,
                                            lineterminator="\n").encode()


class CsvSegment:
    """CSV rows from ``encode(batch) -> columns``; the header names the columns (written with
    the first batch, since canonical tables may lack optional columns)."""

    resumable = True

    def __init__(self, stream: BinaryIO, encode, header: bool):
        self.stream, self.encode, self.header = stream, encode, header
        self._header_pending = False  # set by begin(): only a file started here gets one

    def begin(self) -> None:
        self._header_pending = self.header

    def write(self, batch: pd.DataFrame) -> None:
        columns = self.encode(batch)
        if self._header_pending:
            self.stream.write((",".join(columns) + "\n").encode())
            self._header_pending = False
        self.stream.write(csv_bytes(columns))

    def end(self) -> None:
        pass


class JsonLinesSegment:
    resumable = True

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def begin(self) -> None:
        pass

    def write(self, batch: pd.DataFrame) -> None:
        text = pd.DataFrame(text_columns(batch)).to_json(orient="records", lines=True,
                                                         double_precision=6)
        self.stream.write(text.encode() + (b"" if text.endswith("\n") else b"\n"))

    def end(self) -> None:
        pass


class ParquetSegment:
    resumable = False  # the writer keeps row-group metadata for the footer

    def __init__(self, stream: BinaryIO, compression: str):
        self.stream, self.compression = stream, compression
        self._writer = None

    def begin(self) -> None:
        pass

    def write(self, batch: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = conform(batch)
        if "label" in table:
            table = table.astype({"label": object})
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.stream, arrow.schema.remove_metadata(),
                                            compression=self.compression)
        self._writer.write_table(arrow.cast(self._writer.schema))

    def end(self) -> None:
        if self._writer is not None:
            self._writer.close()


class FileExporter(Exporter):
    kind = "file"

    def __init__(self, name: str, config: FileConfig, *, on_errors: ErrorCallback | None = None):
        super().__init__(name, config, on_errors=on_errors)
        self.files = RotatingFiles(
            Path(config.directory), config.prefix, SUFFIXES[config.format], config.policy(),
            self._segment, gzip_level=config.gzip_level if config.gzip and
            config.format != "parquet" else None, fsync=config.fsync)
        self._healthy = True
        self._retry: tuple[pd.DataFrame, int] | None = None  # (failed batch, records written)
        # Line formats can be cut to whole records: a killed run's .part files are completed
        # on the first submit (gzip and Parquet ones are left as they are).
        self._orphans_pending = config.format in ("csv", "ugr16", "jsonl") and not config.gzip

    def _segment(self, stream: BinaryIO):
        fmt = self.config.format
        if fmt == "csv":
            return CsvSegment(stream, text_columns, self.config.header)
        if fmt == "ugr16":
            return CsvSegment(stream, ugr16_columns, self.config.header)
        if fmt == "jsonl":
            return JsonLinesSegment(stream)
        return ParquetSegment(stream, "gzip" if self.config.gzip else "snappy")

    @property
    def completed(self) -> list[Path]:
        """Files renamed into place so far, oldest first."""
        return list(self.files.completed)

    @property
    def healthy(self) -> bool:
        """False after a write failed, until a later write succeeds."""
        return self._healthy

    def submit(self, batch: pd.DataFrame) -> int:
        # The fan-out retries a failed batch with the same object: continue where the failed
        # attempt stopped, so the records already in completed files are not written twice.
        start = self._retry[1] if self._retry is not None and self._retry[0] is batch else 0
        if self._orphans_pending:
            self._orphans_pending = False
            self.files.adopt_orphans(self._whole_lines)
        try:
            while start < len(batch):
                room = self.files.room()
                stop = len(batch) if room is None else min(len(batch), start + room)
                self.files.write(batch.iloc[start:stop], stop - start)
                start = stop
        except ExporterError as exc:
            self._healthy = False
            self._retry = (batch, start)
            raise ExporterError(f"file exporter {self.name}: {exc}") from exc
        self._retry = None
        self._healthy = True
        return len(batch)

    def _whole_lines(self, part: Path) -> int:
        """Bytes of ``part`` up to its last complete line; 0 when no record line is whole."""
        data = part.read_bytes()
        end = data.rfind(b"\n") + 1
        header = 1 if self.config.format != "jsonl" and self.config.header else 0
        return end if data[:end].count(b"\n") > header else 0

    def flush(self) -> None:
        self.files.rotate_if_old()
        self.files.flush()

    def close(self) -> None:
        self.files.finish()


CONFIG = FileConfig
EXPORTER = FileExporter
