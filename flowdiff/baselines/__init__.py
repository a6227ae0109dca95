"""Reference generators to compare the diffusion model with (``flowdiff baseline``).

* ``iid``   — every column sampled independently from the training marginals; start times
  rebuilt from inter-arrival times drawn from the real ones (``flowdiff.baselines.iid``).
* ``ctgan`` — CTGAN (``ctgan`` package) on the record table (``flowdiff.baselines.ctgan``).
"""

from __future__ import annotations


class BaselineError(RuntimeError):
    """A baseline cannot run (missing package, unusable training data); says why."""
