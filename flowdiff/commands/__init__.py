"""Subcommands of the flowdiff CLI, one module each (see flowdiff.cli)."""
