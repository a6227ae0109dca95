"""The Diffusion-TS reproduction on generic numeric time series (Stocks, ETTh): what the
benchmarks and ``flowdiff train --kind timeseries`` use, and nothing the daemon needs.

- ``series``: load a numeric CSV, split by time, scale on the training rows, window;
  ``train_on_csv``;
- ``run_config``: the YAML run configs (configs/dts-*.yaml), read by the config engine;
- ``metrics``: the paper's scores (discriminative, predictive, correlational, context-FID);
- ``ts2vec``: the TS2Vec-style encoder behind context-FID.

The model itself (network, diffusion, samplers, trainer) is ``flowdiff.model``.
"""
