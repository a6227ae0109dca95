"""Reversible codec: flow records <-> float32 feature vectors (one record = one time step).

    from flowdiff.codec import FlowCodec, CodecConfig, CodecVersionError
    codec = FlowCodec.fit(train_table, CodecConfig.from_dict(cfg), seed=0)
    x = codec.encode(table)                      # (n, codec.width) float32 in [0, 1]
    result = codec.decode(x, start_ts=t0)        # DecodeResult(table, repairs)
    codec.save(dir); FlowCodec.load(dir)
"""

from flowdiff.codec.codec import (CodecFileError, CodecVersionError, DecodeResult,
                                  EncodeResult, FlowCodec)
from flowdiff.codec.config import CodecConfig, Word2VecConfig

__all__ = ["FlowCodec", "CodecConfig", "CodecVersionError",
           "CodecFileError", "DecodeResult", "EncodeResult", "Word2VecConfig"]
