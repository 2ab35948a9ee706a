#!/usr/bin/env python
"""Throughput of ``tfstronglens fit-many``: lenses per hour on this machine, against the
loop a user would write without it (one ``tfstronglens fit`` process per lens).

    python benchmarks/fit_many.py [--num-lenses 8] [--workers 1,2] [--method map]
        [--hmc] [--keep DIR]

It simulates ``--num-lenses`` lenses with ``tfstronglens simulate`` (the default
configuration: SIE + shear, Sersic lens light and source, HST/ACS-like) and fits them
with the options of ``FIT`` (``--method map``: 16 starts x 300 Adam steps + polish;
``--hmc``: MAP then NUTS, 4 chains x 200 draws after 200 warm-up) three ways:

* ``loop``: ``tfstronglens fit IMAGE --out DIR`` once per lens, one after the other
  (a new Python + TensorFlow process per lens, the shell loop);
* ``fit-many -w 1``: ``tfstronglens fit-many FOLDER --num-workers 1`` (one process,
  child processes of ``--lenses-per-process`` lenses);
* ``fit-many -w N``: the same with ``--num-workers N`` (Beam's DirectRunner in
  multi-processing mode).

and prints wall time, lenses per hour, and the extrapolation to 10^5 lenses on W
workers of this speed (lenses/h per worker x W, assuming the lenses are independent,
which they are). Every run starts from an empty output folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

FIT_MODEL = ["--lens", "sie+shear", "--lens-light", "sersic", "--source", "sersic",
             "--num-starts", "16", "--map-steps", "300"]
FIT_MAP = FIT_MODEL + ["--method", "map"]
FIT_HMC = FIT_MODEL + ["--method", "hmc", "--num-chains", "4", "--num-results", "200",
                       "--num-burnin", "200"]


def _run(cmd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-lenses", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="comma-separated --num-workers values")
    ap.add_argument("--hmc", action="store_true", help="fit with HMC instead of MAP only")
    ap.add_argument("--no-loop", action="store_true", help="skip the one-process-per-lens loop")
    ap.add_argument("--keep", default=None, metavar="DIR", help="work here and keep it")
    args = ap.parse_args()
    opts = FIT_HMC if args.hmc else FIT_MAP
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    exe = [sys.executable, "-m", "tfstronglens"]
    work = args.keep or tempfile.mkdtemp(prefix="fit_many_bench_")
    os.makedirs(work, exist_ok=True)
    sims = os.path.join(work, "sims")
    if not os.path.isdir(sims):
        _run(exe + ["simulate", "--n", str(args.num_lenses), "--out", sims], env)
    images = sorted(f for f in os.listdir(sims) if f.endswith(".fits"))[:args.num_lenses]
    n = len(images)
    print(f"fit-many throughput: {n} lenses, fit options {' '.join(opts)}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start")
    rows = []
    if not args.no_loop:
        out = os.path.join(work, "loop")
        shutil.rmtree(out, ignore_errors=True)
        t = sum(_run(exe + ["fit", os.path.join(sims, f), "--out",
                            os.path.join(out, f[:-5])] + opts, env) for f in images)
        rows.append(("loop of `fit`", 1, t))
    for w in [int(x) for x in args.workers.split(",")]:
        out = os.path.join(work, f"many_w{w}")
        shutil.rmtree(out, ignore_errors=True)
        t = _run(exe + ["fit-many", sims, "--out", out, "--num-workers", str(w)] + opts, env)
        rows.append((f"fit-many -w {w}", w, t))
    base = rows[0][2]
    print(f"{'how':18s} {'workers':>7s} {'wall s':>8s} {'lenses/h':>9s} {'per worker':>11s} "
          f"{'vs first':>9s} {'1e5 lenses on 100 such workers':>31s}")
    for how, w, t in rows:
        rate = n / t * 3600
        per = rate / w
        days = 1e5 / (per * 100) / 24
        print(f"{how:18s} {w:7d} {t:8.1f} {rate:9.1f} {per:11.1f} {base / t:9.2f} "
              f"{days:27.1f} days")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
