"""Report files: metrics.json, summary.md and summary.html (one column per synthetic)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from flowdiff.atomic import write_text_atomic


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _sanitise(value):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitise(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def summary_table(result: dict) -> pd.DataFrame:
    """Rows = headline metrics, columns = synthetic inputs, plus the drift change."""
    columns = {}
    for name, entry in result["synthetics"].items():
        row = dict(entry["headline"])
        row["drift_max_relative_change"] = entry["drift"]["max_relative_change"]
        for metric, change in entry["drift"]["absolute_change"].items():
            row[f"drift_abs_change_{metric}"] = change
        row["segments"] = len(entry["drift"]["segments"])
        row["records"] = entry["metrics"]["records"]
        columns[name] = row
    return pd.DataFrame(columns)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) > 100:
        return f"{int(value)}"
    value = float(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def to_markdown(table: pd.DataFrame) -> str:
    header = "| metric | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---|" * len(table.columns)
    lines = [header, rule]
    for metric, row in table.iterrows():
        lines.append(f"| {metric} | " + " | ".join(_fmt(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def to_html(table: pd.DataFrame, images: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr><td>" + html.escape(str(m)) + "</td>" +
                   "".join(f"<td>{_fmt(v)}</td>" for v in row.tolist()) + "</tr>"
                   for m, row in table.iterrows())
    figures = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}">'
                      f"<figcaption>{html.escape(p)}</figcaption></figure>" for p in images)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>flowdiff fidelity"
            "</title><style>td,th{padding:2px 8px;text-align:right}img{max-width:640px}"
            "</style></head><body><h1>flowdiff fidelity report</h1>"
            f"<table border='1'><tr><th>metric</th>{head}</tr>{body}</table>{figures}"
            "</body></html>")


def write(result: dict, real: pd.DataFrame, synthetics: dict[str, pd.DataFrame], out_dir,
          plots: bool = True) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "metrics.json", "markdown": out / "summary.md",
             "html": out / "summary.html"}
    write_text_atomic(files["json"], json.dumps(_sanitise(result), indent=2,
                                            default=_json_default))
    images: list[str] = []
    if plots:
        from flowdiff.eval import plots as plotting
        images = plotting.write_all(result, real, synthetics, out)
    table = summary_table(result)
    real_validity = result["real"]["validity"]["violation_fraction"]
    markdown = (f"# flowdiff fidelity report\n\nReal trace: {result['real']['records']} "
                f"records (its own validity violation fraction: {_fmt(real_validity)}). "
                "Lower is better for every metric.\n\n" + to_markdown(table) + "\n")
    if images:
        markdown += "\n## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in images) + "\n"
    write_text_atomic(files["markdown"], markdown)
    write_text_atomic(files["html"], to_html(table, images))
    written = {k: str(v) for k, v in files.items()}
    written.update({f"plot:{p}": str(out / p) for p in images})
    return written
