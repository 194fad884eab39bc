#!/usr/bin/env python3
"""A plain single-process PyTorch FedMD loop: the peer fd-sim's default digits run is measured
against (see benchmarks/README.md). Never part of the tests.

Set-up: pip install torch numpy

It trains on the split `fd-sim --export-split DIR` writes, so both see the same records.

The setup mirrors fd-sim's default: digits, 20% test, 20% public, 60% private over 10 clients
by Dirichlet(0.5) (fd-sim's split); MLP 64-128-10, Adam lr 1e-3, batch 32. Before the first round each client
trains on its private records; in each of 20 rounds the target is the mean of the clients'
softmax(z / T) on the public set, and each client does `--public-epochs` epochs over the
public set of `(1 - alpha) * T^2 * KL(target || softmax(s / T))` plus `alpha * CE` on a random
private batch per step, T = 2, alpha 0.7 -> 0.3 linearly. The centralised and local-only
baselines train 60 epochs. Prints one JSON object.
"""

import argparse
import json
import pathlib
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_csv(path):
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    return rows[:, :-1], rows[:, -1].astype(np.int64)


def load_split(directory, clients):
    """The split `fd-sim --export-split DIR` wrote: the same records fd-sim trains on."""
    d = pathlib.Path(directory)
    test, public = read_csv(d / "test.csv"), read_csv(d / "public.csv")
    shards = [read_csv(d / f"client-{i:02}.csv") for i in range(clients)]
    # Image-wide standardisation with the private records' statistics.
    private = np.concatenate([x for x, _ in shards])
    mean, std = private.mean(), private.std()
    t = lambda xy: (torch.from_numpy((xy[0] - mean) / std), torch.from_numpy(xy[1]))
    return t(test), t(public)[0], [t(s) for s in shards]


def mlp(hidden):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train_ce(model, opt, x, y, epochs, batch):
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, help="directory from fd-sim --export-split")
    ap.add_argument("--seed", type=int, default=1, help="seed of initialisation and batches")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--local-epochs", type=int, default=20)
    ap.add_argument("--public-epochs", type=int, default=5)
    ap.add_argument("--baseline-epochs", type=int, default=60)
    args = ap.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    (tx, ty), public, shards = load_split(args.split, args.clients)
    b, T = args.batch, args.temperature

    def fresh():
        m = mlp(args.hidden)
        return m, torch.optim.Adam(m.parameters(), lr=args.lr)

    central, opt = fresh()
    all_x = torch.cat([s[0] for s in shards])
    all_y = torch.cat([s[1] for s in shards])
    train_ce(central, opt, all_x, all_y, args.baseline_epochs, b)
    centralised = accuracy(central, tx, ty)
    local_only = []
    for x, y in shards:
        m, opt = fresh()
        train_ce(m, opt, x, y, args.baseline_epochs, b)
        local_only.append(accuracy(m, tx, ty))

    nodes = [fresh() for _ in shards]
    for (m, opt), (x, y) in zip(nodes, shards):
        train_ce(m, opt, x, y, args.local_epochs, b)
    round_acc = []
    for r in range(args.rounds):
        alpha = 0.7 + (0.3 - 0.7) * r / max(args.rounds - 1, 1)
        with torch.no_grad():
            target = torch.stack([F.softmax(m(public) / T, 1) for m, _ in nodes]).mean(0)
        for (m, opt), (x, y) in zip(nodes, shards):
            for _ in range(args.public_epochs):
                perm = torch.randperm(len(public))
                for i in range(0, len(public), b):
                    idx = perm[i : i + b]
                    priv = torch.randint(len(y), (b,))
                    kd = F.kl_div(
                        F.log_softmax(m(public[idx]) / T, 1), target[idx], reduction="batchmean"
                    )
                    ce = F.cross_entropy(m(x[priv]), y[priv])
                    opt.zero_grad()
                    ((1 - alpha) * T * T * kd + alpha * ce).backward()
                    opt.step()
        round_acc.append(float(np.mean([accuracy(m, tx, ty) for m, _ in nodes])))

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "federated_mean_acc": round_acc[-1],
                "local_only_mean_acc": float(np.mean(local_only)),
                "centralized_acc": centralised,
                "rounds": round_acc,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "wall_seconds": time.perf_counter() - started,
                "peak_rss_mib": usage.ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
