"""``stdout`` exporter: one JSON object per record on standard output (or standard error).
``JsonLinesExporter`` writes the same lines to any text handle (``flowdiff generate``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Literal, TextIO

import pandas as pd

from flowdiff.exporters.base import (ErrorCallback, Exporter, ExporterError, ExporterSettings,
                                     OutputClosed)
from flowdiff.schema import to_json_records


def write_json_lines(batch: pd.DataFrame, out: TextIO) -> int:
    """Write one JSON object per record (text IPs and flags); return the number written."""
    records = to_json_records(batch)
    if records:
        out.write("\n".join(json.dumps(r, separators=(",", ":")) for r in records) + "\n")
    return len(records)


def silence(handle: TextIO) -> None:
    """Point ``handle``'s file descriptor at /dev/null, so the text still buffered in it (and
    the interpreter's flush at exit) goes nowhere instead of raising EPIPE again (the recipe
    of the Python docs' "Note on SIGPIPE"). Handles without a descriptor are left alone."""
    try:
        fd = handle.fileno()
    except (OSError, ValueError, AttributeError):  # io.StringIO and the like
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class JsonLinesExporter(Exporter):
    kind = "jsonl"

    def __init__(self, name: str, handle: TextIO, *,
                 on_errors: ErrorCallback | None = None):
        super().__init__(name, on_errors=on_errors)
        self.handle = handle
        self.reader_gone = False  # set on EPIPE: the reader of the output exited

    def submit(self, batch: pd.DataFrame) -> int:
        try:
            written = write_json_lines(batch, self.handle)
            self.handle.flush()  # paced records must reach a pipe when released
            return written
        except BrokenPipeError as exc:
            raise self._reader_gone(exc) from exc
        except OSError as exc:
            raise ExporterError(f"{self.name}: cannot write JSON lines: {exc}") from exc

    def flush(self) -> None:
        try:
            self.handle.flush()
        except BrokenPipeError as exc:
            raise self._reader_gone(exc) from exc
        except OSError as exc:
            raise ExporterError(f"{self.name}: cannot flush: {exc}") from exc

    def _reader_gone(self, exc: OSError) -> OutputClosed:
        self.reader_gone = True
        silence(self.handle)
        return OutputClosed(f"{self.name}: the reader closed the output ({exc.strerror})")


@dataclass
class StdoutConfig(ExporterSettings):
    stream: Literal["stdout", "stderr"] = "stdout"


class StdoutExporter(JsonLinesExporter):
    kind = "stdout"

    def __init__(self, name: str, config: StdoutConfig, *,
                 on_errors: ErrorCallback | None = None):
        super().__init__(name, sys.stdout if config.stream == "stdout" else sys.stderr,
                         on_errors=on_errors)
        self.config = config


CONFIG = StdoutConfig
EXPORTER = StdoutExporter
