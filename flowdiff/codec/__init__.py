"""Reversible codec: flow records <-> float32 feature vectors (one record = one time step)."""
