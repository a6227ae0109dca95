"""Output calibration, part by part, on ONE rollout of a trained model.

    nice -n 10 python benchmarks/calibration_ablation.py --model MODEL_DIR \
        --data ../shared/data/ugr16/ugr16_day1_train.csv.gz --records 100000 --streams 1 \
        --out /tmp/calibration-ablation

1. Fits the calibration (``flowdiff calibrate``'s fit: a rollout of ``--fit-streams`` x
   ``--fit-turns`` turns with seed ``--fit-seed``, against the artifact's training records).
2. Rolls the model out once more, with ``--seed`` (another seed than the fit's), for
   ``--records`` records in ``--streams`` streams, and keeps the raw encoded outputs.
3. Decodes those same outputs with each variant (``none``, each part of
   ``OutputCalibration.PARTS`` alone, ``all``, and ``all-PART``: all but that part) exactly
   as the daemon decodes a turn (same
   decode seeds, shared timeline), and writes ``OUT/<variant>.parquet``. Variant ``blocks``
   is ``all`` plus the block targets (``flowdiff.codec.block_targets``, fitted as
   ``flowdiff calibrate`` fits them, 25-record blocks); ``blocks-no-offsets`` the same
   without the side draws' offsets.

``--decode-seeds 7 8 9 10`` decodes the same outputs once per seed (the bank walk and the
decoding draws change, the model's outputs do not): the classifier's score moves with the
walk by more than its own noise, so a change is judged over several seeds.

Score the variants with ``flowdiff eval --real HELDOUT --synthetic none=OUT/none.parquet ...``.
The artifact itself is not changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("benchmarks.calibration_ablation")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="the trace the model trained on")
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--decode-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="decode the same rollout once per seed (the walk and the decoding "
                        "draws change, the model's outputs do not): OUT/<variant>.parquet for "
                        "the first, OUT/<variant>-seed<SEED>.parquet for the others; default: "
                        "--seed")
    p.add_argument("--start-ts", type=float, default=1460390400.0)
    p.add_argument("--sampler", default="conditional")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--fit-streams", type=int, default=16)
    p.add_argument("--fit-turns", type=int, default=30)
    p.add_argument("--fit-seed", type=int, default=0)
    p.add_argument("--regime-windows", type=int, default=200,
                   help="training windows the starting-noise regimes are fitted on, as "
                        "flowdiff calibrate does (0: independent noise)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None,
                   help="keep the reference and both rollouts' raw outputs in this .npz and "
                        "reuse them on the next run (to try calibration changes in seconds)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="decode only these: none, a part, all, all-PART (all but one part) "
                        "or blocks (all + block targets)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    torch.set_num_threads(1)
    from flowdiff.artifact import load_artifact
    from flowdiff.codec.calibration import OutputCalibration
    from flowdiff.daemon.generator import StreamGenerator
    from flowdiff.model import make_sampler

    for directory in {args.out, *([args.cache.parent] if args.cache else [])}:
        directory.mkdir(parents=True, exist_ok=True)   # before the rollouts, not after them
    artifact = load_artifact(args.model)
    codec = artifact.codec
    codec.set_calibration(None)
    sampler = make_sampler(args.sampler, steps=args.steps)
    if args.cache is not None and args.cache.exists():
        cached = np.load(args.cache)
        reference, fit_outputs, raw = cached["reference"], cached["fit_outputs"], list(cached["raw"])
        regimes = json.loads(str(cached["regimes"])) if "regimes" in cached else {}
        log.info("reference and rollouts read from %s", args.cache)
    else:
        reference, fit_outputs, raw, regimes = rollouts(artifact, sampler, args)
        if args.cache is not None:
            np.savez(args.cache, reference=reference, fit_outputs=fit_outputs, raw=np.stack(raw),
                     regimes=json.dumps(regimes))
    started = time.perf_counter()
    calibration = OutputCalibration.fit(codec, fit_outputs, reference, horizon=artifact.horizon)
    calibration.regimes = regimes
    log.info("calibration fitted in %.0f s", time.perf_counter() - started)

    parts_ = OutputCalibration.PARTS
    variants = {"none": None, **{part: (part,) for part in parts_}, "all": parts_,
                **{f"all-{part}": tuple(p for p in parts_ if p != part) for part in parts_},
                "blocks": parts_, "blocks-no-offsets": parts_}
    if args.variants:
        variants = {name: variants[name] for name in args.variants}
    targets = {}
    if {"blocks", "blocks-no-offsets"} & set(variants):
        from flowdiff.calibrate import artifact_split
        from flowdiff.codec.block_targets import BlockTargets

        table = artifact_split(artifact, args.data)[0]
        fits = {"blocks": {"outputs": fit_outputs}, "blocks-no-offsets": {}}
        targets = {name: BlockTargets.fit(codec, calibration, reference, table, **kwargs)
                   for name, kwargs in fits.items() if name in variants}   # only those asked for
    decode_seeds = args.decode_seeds or [args.seed]
    for name, parts in variants.items():
        codec.set_calibration(None if parts is None else
                              calibration if name in targets else calibration.subset(parts))
        codec.set_block_targets(targets.get(name))
        for seed in decode_seeds:
            started = time.perf_counter()
            decoder = StreamGenerator(artifact.model, codec, sampler, context=artifact.context,
                                      horizon=artifact.horizon, streams=args.streams, seed=seed)
            decoder.clocks.fill_(args.start_ts)
            tables = [decoder.decode_turn(steps).records for steps in raw]
            seconds = time.perf_counter() - started
            table = pd.concat(tables, ignore_index=True).iloc[:args.records]
            label = name if seed == decode_seeds[0] else f"{name}-seed{seed}"
            table.to_parquet(args.out / f"{label}.parquet")
            srcip, dstip = table["srcip"].to_numpy(), table["dstip"].to_numpy()
            print(f"{label:>10}: {len(table)} records, repeat srcip "
                  f"{np.mean(srcip[1:] == srcip[:-1]):.3f} dstip {np.mean(dstip[1:] == dstip[:-1]):.3f}, "
                  f"distinct srcip {len(set(srcip))}, "
                  f"rate {len(table) / (table['ts'].max() - table['ts'].min()):.2f}/s, "
                  f"decoded at {sum(map(len, tables)) / seconds:.0f} records/s")
    return 0


def rollouts(artifact, sampler, args):
    """(encoded training reference, the fit rollout's outputs, the evaluation rollout's
    per-turn outputs, the starting-noise correlation {part: rho} both rollouts used)."""
    from flowdiff.calibrate import fit_regimes, rollout_outputs, training_reference
    from flowdiff.daemon.generator import StreamGenerator, horizon_noise
    from flowdiff.model import make_sampler

    reference = training_reference(artifact, args.data)
    regimes, _report = fit_regimes(artifact, reference, sampler, args.regime_windows,
                                   args.fit_seed)
    fit_outputs = rollout_outputs(artifact, sampler, args.fit_streams, args.fit_turns,
                                  args.fit_seed, regimes)

    gen = StreamGenerator(artifact.model, artifact.codec, sampler, context=artifact.context,
                          horizon=artifact.horizon, streams=args.streams, seed=args.seed,
                          noise=horizon_noise(artifact.codec, regimes))
    gen.start_unconditional(make_sampler("ddim", steps=args.steps), start_ts=args.start_ts)
    turns = math.ceil(args.records / (args.streams * artifact.horizon))
    started = time.perf_counter()
    raw = []
    for turn in range(turns):
        raw.append(gen.predict().numpy())
        if (turn + 1) % 50 == 0:
            log.info("rollout turn %d/%d", turn + 1, turns)
    seconds = time.perf_counter() - started
    log.info("rollout: %d turns in %.0f s (%.0f records/s model only)", turns, seconds,
             turns * args.streams * artifact.horizon / seconds)

    return reference, fit_outputs, raw, regimes


if __name__ == "__main__":
    sys.exit(main())
