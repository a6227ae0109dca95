"""The serving daemon: streams, rolling contexts, pacing, fan-out, metrics, health, state."""
