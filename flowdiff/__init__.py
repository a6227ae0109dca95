"""flowdiff: learn real network traffic, then stream realistic synthetic flows forever.

Pipeline (data flows one way): ingest -> codec -> model -> daemon -> exporters.
"""

__version__ = "0.1.0"
