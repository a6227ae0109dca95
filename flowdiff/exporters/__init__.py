"""Sinks for generated flow records. Every exporter implements ``exporters.base.Exporter``."""
