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
import resource
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def run(cmd):
    """Runs `cmd` to completion (so its CPU time lands in RUSAGE_CHILDREN); returns stdout."""
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr.decode()}")
    return proc.stdout.decode()


def children_cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


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
                before = children_cpu()
                if name == "fd-sim":
                    out_json = tmp / "fd-sim.json"
                    run([args.fd_sim, "--seed", str(args.seed), "--json", str(out_json), *args.extra])
                    acc = json.loads(out_json.read_text())["federated_mean_acc"]
                else:
                    out = run(
                        [sys.executable, str(HERE / "pytorch_fd.py"), "--split", str(split),
                         "--seed", str(args.seed + i)]
                    )
                    acc = json.loads(out)["federated_mean_acc"]
                cpu = children_cpu() - before
                rows[name].append((acc, cpu))
                print(f"run {i + 1} {name:8} accuracy {acc:.4f} cpu {cpu:6.2f} s", file=sys.stderr)

    med = {k: (statistics.median(a for a, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
    print(f"| | fd-sim (seed {args.seed}) | PyTorch peer | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| federated mean accuracy (median of {args.runs}) | {med['fd-sim'][0]:.4f} | {med['pytorch'][0]:.4f} | "
          f"{med['fd-sim'][0] - med['pytorch'][0]:+.4f} |")
    print(f"| CPU seconds (median of {args.runs}) | {med['fd-sim'][1]:.2f} | {med['pytorch'][1]:.2f} | "
          f"{med['fd-sim'][1] / med['pytorch'][1]:.2f}x |")


if __name__ == "__main__":
    main()
