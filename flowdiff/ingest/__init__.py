"""Ingest: trace files (UGR'16 / NetShare / generic CSV or Parquet, canonical tables,
pcap/pcapng captures) -> the canonical flow table of ``flowdiff.schema``.

    from flowdiff.ingest import read_flows, iter_flow_chunks, write_flows
    table, summary = read_flows("trace.csv.gz")          # sorted by ts, conformed
    for chunk in iter_flow_chunks("big.csv.gz"):          # bounded memory, file order
        ...
    write_flows(table, "flows.parquet")                  # reads back exactly

Bad input raises IngestError (file, line, field, what was expected); with
``skip_bad=True`` bad rows are dropped and counted in the IngestSummary instead.
"""

from flowdiff.ingest.errors import IngestError
from flowdiff.ingest.formats import FORMATS, detect
from flowdiff.ingest.mapping import Mapping, load_mapping
from flowdiff.ingest.pcap import FlowTimeouts
from flowdiff.ingest.reader import iter_flow_chunks, read_flows
from flowdiff.ingest.summary import IngestSummary
from flowdiff.ingest.writer import write_flows

__all__ = ["read_flows", "iter_flow_chunks", "write_flows", "IngestError", "IngestSummary",
           "Mapping", "load_mapping", "FORMATS", "detect", "FlowTimeouts"]
