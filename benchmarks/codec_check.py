"""Codec quality check on held-out UGR'16 traffic, for several codec configurations.

    nice -n 10 python3 benchmarks/codec_check.py [--variants netshare,default,ports-bits]

Splits ``../shared/data/ugr16/ugr16_day1_train.csv.gz`` as ``benchmarks/fidelity.py``
does (the last ``--heldout-records`` records are held out, the codec is fitted on everything
before), then for each variant: fit, encode the held-out records, add Gaussian noise of each
``--noise`` level to the encoded values, decode, and score against the held-out records
(``flowdiff.eval.codec_check``). Prints one table per variant and a comparison of the
headline figures; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ugr16" / "ugr16_day1_train.csv.gz"

NETSHARE_FIELDS = {"ts": "log_minmax", "td": "log_minmax", "pkt": "log_minmax",
                   "byt": "log_minmax", "srcip": "bits", "dstip": "bits",
                   "srcport": "word2vec_nearest", "dstport": "word2vec_nearest",
                   "proto": "word2vec_nearest"}
# name -> codec config (a 'codec:' section); "default" is the built-in default
VARIANTS = {
    "netshare": {"fields": NETSHARE_FIELDS},                       # flowdiff 0.1's codec
    "default": {},
    "ports-bits": {"fields": {"srcport": "bits", "dstport": "bits"}},
    "numbers-log": {"fields": {f: "log_minmax" for f in ("ts", "td", "pkt", "byt")}},
    "tau-0.02": {"word2vec": {"temperature": 0.02}},
    "tau-0.1": {"word2vec": {"temperature": 0.1}},
    "service-20": {"word2vec": {"service_min_count": 20}},
    "prior-0": {"word2vec": {"prior_power": 0.0}},
    "prior-0.5": {"word2vec": {"prior_power": 0.5}},
    "prior-0-tau-0.1": {"word2vec": {"prior_power": 0.0, "temperature": 0.1}},
}
HEADLINE = ("jsd_srcport", "jsd_dstport", "top20_error_srcport", "top20_error_dstport",
            "max_share_srcport", "third_srcport", "third_dstport", "emd_sf_td", "emd_sf_pkt", "emd_sf_byt", "emd_sf_iat",
            "repeat_dstip", "repeat_srcip")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--heldout-records", type=int, default=100_000)
    p.add_argument("--variants", default="netshare,default,ports-bits",
                   help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--noise", default="0,0.02,0.1", help="noise levels (encoded units)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every figure here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from fidelity import split_by_time

    from flowdiff.codec import CodecConfig, FlowCodec
    from flowdiff.eval import read_table
    from flowdiff.eval.codec_check import codec_check, to_markdown

    opts = parse_args(argv)
    names = [v for v in opts.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    noise = [float(x) for x in opts.noise.split(",")]
    table = read_table(opts.data)
    train, _reference, heldout = split_by_time(table, opts.heldout_records)
    del table
    print(f"fit on {len(train):,} records, check on the {len(heldout):,} held-out records, "
          f"noise {noise}")
    results = {}
    for name in names:
        started = time.perf_counter()
        codec = FlowCodec.fit(train, CodecConfig.from_dict(VARIANTS[name]), seed=opts.seed)
        fitted = time.perf_counter() - started
        rows = codec_check(codec, heldout, noise, opts.seed)
        results[name] = {"config": VARIANTS[name], "width": codec.width, "rows": rows,
                         "fit_seconds": fitted}
        print(f"\n### {name} (F = {codec.width}, fit {fitted:.0f} s, check "
              f"{time.perf_counter() - started - fitted:.0f} s)\n")
        print(to_markdown(rows))
    print("\n### headline: value at each noise level (" + ", ".join(map(str, noise))
          + ", blend)\n")
    print("| metric | real | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key in HEADLINE:
        real = results[names[0]]["rows"][0].get(key)
        cells = [" / ".join(_fmt(r.get(key)) for r in results[n]["rows"][1:]) for n in names]
        print(f"| {key} | {_fmt(real) if key.startswith(('repeat', 'max_share')) else '-'} | "
              + " | ".join(cells) + " |")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1, default=str))
        print(f"\nwrote {opts.json}")
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
