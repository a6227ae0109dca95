"""The one error type of ingest: names the file, the place in it and the field."""

from __future__ import annotations

from pathlib import Path

from flowdiff.schema import SchemaError


class IngestError(SchemaError):
    """Input that cannot become canonical flow records.

    ``path`` is the input file, ``line`` the 1-based place of the problem (physical text line
    with the header counted for CSV; row number for Parquet; packet number for pcap; ``None``
    for problems of the whole file), ``field`` the column in the file (``None`` when the
    problem is not one field). ``where`` says which kind of place ``line`` counts.
    The message reads like ``data.csv line 17, field 'sp': port 70000 out of range 0..65535``.
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, detail: str,
                 where: str = "line"):
        self.path = Path(path)
        self.line = line
        self.field = field
        self.detail = detail
        self.where = where
        super().__init__(format_location(path, line, field, where) + f": {detail}")


def format_location(path: str | Path, line: int | None, field: str | None,
                    where: str = "line") -> str:
    text = str(path)
    if line is not None:
        text += f" {where} {line}"
    if field is not None:
        text += f", field {field!r}" if line is not None else f" field {field!r}"
    return text
