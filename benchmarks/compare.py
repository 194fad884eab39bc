#!/usr/bin/env python3
"""Runs fd-sim's default digits run and the PyTorch peer (pytorch_fd.py) alternately on the
same split and prints accuracy, CPU seconds (user + system of the whole process, from the
kernel's accounting) of both: medians over the runs, and their ratio.

Set-up:  pip install torch numpy   and   cargo build --release -p fd-sim
Run:     python3 benchmarks/compare.py [--runs 3] [--seed 1] [-- extra fd-sim arguments]
"""

import argparse
import json
import pathlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def run(cmd):
    """Runs `cmd` to completion; returns its stdout, CPU seconds (user + system), wall seconds
    and peak resident memory in MB, each from the kernel's accounting of that one process."""
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            sys.exit(f"{' '.join(map(str, cmd))} failed ({code}):\n{err.read().decode()}")
    # Linux reports ru_maxrss in KiB.
    return out.decode(), usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fd-sim", default=str(ROOT / "target/release/fd-sim"))
    ap.add_argument("extra", nargs="*", help="extra fd-sim arguments (after --)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        split = tmp / "split"
        subprocess.run(
            [args.fd_sim, "--seed", str(args.seed), "--export-split", str(split), *args.extra],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rows = {"fd-sim": [], "pytorch": []}
        for i in range(args.runs):
            for name in ("fd-sim", "pytorch"):
                if name == "fd-sim":
                    out_json = tmp / "fd-sim.json"
                    _, cpu, wall, rss = run(
                        [args.fd_sim, "--seed", str(args.seed), "--json", str(out_json), *args.extra]
                    )
                    acc = json.loads(out_json.read_text())["federated_mean_acc"]
                else:
                    out, cpu, wall, rss = run(
                        [sys.executable, str(HERE / "pytorch_fd.py"), "--split", str(split),
                         "--seed", str(args.seed + i)]
                    )
                    acc = json.loads(out)["federated_mean_acc"]
                rows[name].append((acc, cpu, wall, rss))
                print(f"run {i + 1} {name:8} accuracy {acc:.4f} cpu {cpu:6.2f} s wall {wall:6.2f} s "
                      f"peak {rss:6.1f} MB", file=sys.stderr)

    med = {k: [statistics.median(r[j] for r in v) for j in range(4)] for k, v in rows.items()}
    ours, theirs = med["fd-sim"], med["pytorch"]
    print(f"| median of {args.runs} alternating runs | fd-sim (seed {args.seed}) | PyTorch peer | fd-sim / peer |")
    print("| --- | --- | --- | --- |")
    print(f"| federated mean accuracy | {ours[0]:.4f} | {theirs[0]:.4f} | {ours[0] - theirs[0]:+.4f} |")
    for j, what, unit in ((1, "CPU seconds", "s"), (2, "wall seconds", "s"), (3, "peak memory", "MB")):
        print(f"| {what} | {ours[j]:.2f} {unit} | {theirs[j]:.2f} {unit} | {ours[j] / theirs[j]:.2f}x |")


if __name__ == "__main__":
    main()
