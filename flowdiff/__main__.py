from flowdiff.cli import entry

entry()
