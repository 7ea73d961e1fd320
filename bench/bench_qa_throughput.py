"""Training throughput (slices per second) of the QA strategies, side by side in one process.

Each strategy's network, loss, optimizer and ``prepare_batch`` are built from the bundle's own configs (as
``monai.bundle run training`` builds them) and timed on the same in-memory batches: one training step is
``prepare_batch``, forward, loss, backward and optimizer step, as MONAI's ``SupervisedTrainer`` does it. Strategies
are timed in interleaved rounds (so a change of machine load hits all of them alike) and reported as the median
over rounds, with the ratio to the baseline. With ``--loader`` the augmenting data loader of the baseline config
is timed too (on the synthetic demo set), to show whether it can keep up with the network.

    python bench/bench_qa_throughput.py                      # 128x128 slices, batch 32
    python bench/bench_qa_throughput.py --spatial_size 64 --loader

Contrastive pretraining counts a slice once although the encoder sees its two views.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from monai.bundle import ConfigParser  # noqa: E402

STEPS = {  # name: (config overlays on common.yaml, ids of network, loss, optimizer, prepare_batch), step 2 frozen
    "baseline": (["qa_baseline.yaml"], ("network", "loss", "optimizer", "train#prepare_batch"), False),
    "multitask": (
        ["qa_baseline.yaml", "qa_multitask.yaml"],
        ("network", "loss", "optimizer", "train#prepare_batch"),
        False,
    ),
    "contrastive pretraining": (
        ["qa_baseline.yaml", "qa_contrastive.yaml"],
        ("pretrain#network", "pretrain#loss", "pretrain#optimizer", "pretrain#prepare_batch"),
        False,
    ),
    "contrastive QA (frozen encoder)": (
        ["qa_baseline.yaml", "qa_contrastive.yaml"],
        ("network", "loss", "optimizer", "train#prepare_batch"),
        True,
    ),
}


def build(files: list[str], ids: tuple, frozen: bool, overrides: dict):
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", *files)])
    parser.update({"bundle_root": ROOT, "qa_loss#pos_weight": None, **overrides})
    net = parser.get_parsed_content(ids[0])
    if frozen:
        parser.get_parsed_content("network").freeze_encoder()
    return net, parser.get_parsed_content(ids[1]), parser.get_parsed_content(ids[2]), parser.get_parsed_content(ids[3])


def make_batch(n: int, size: int, views: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 2, 1, size, size, generator=g) if views else torch.rand(n, 1, size, size, generator=g)
    label = (torch.rand(n, 1, size, size, generator=g) > 0.8).float()
    target = (torch.rand(n, 4, generator=g) > 0.3).float()
    return {"image": image, "label": label, "target": target}


def step(net, loss_fn, opt, prepare, batch, device) -> float:
    x, y = prepare(batch, device)
    net.train()
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y).mean()
    loss.backward()
    opt.step()
    return loss.item()


def time_loader(overrides: dict, batches: int) -> float:
    """Slices per second of the baseline's training loader (augmentation included) on the demo set."""
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", "qa_baseline.yaml")])
    parser.update({"bundle_root": ROOT, **overrides})
    loader = parser.get_parsed_content("train#dataloader")
    n, t0, it = 0, None, iter(loader)
    for i in range(batches + 1):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        if i == 0:
            t0 = time.perf_counter()  # the first batch pays for starting the workers
            continue
        n += len(b["image"])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spatial_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32, help="slices per step (the paper: 128; 512 in pretraining)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per strategy and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--strategies", default=",".join(STEPS), help="comma-separated among: " + ", ".join(STEPS))
    p.add_argument("--loader", action="store_true", help="also time the augmenting data loader on the demo set")
    p.add_argument("--output", default=os.path.join(ROOT, "runs", "bench", "qa_throughput.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for n in names:
        if n not in STEPS:
            raise SystemExit(f"ERROR: unknown strategy {n!r}; choose among {list(STEPS)}")
    overrides = {
        "spatial_size": args.spatial_size,
        "batch_size": args.batch_size,
        "pretrain_batch_size": args.batch_size,
    }
    torch.manual_seed(0)
    setups = {n: build(*STEPS[n][:3], overrides) for n in names}
    batches = {n: make_batch(args.batch_size, args.spatial_size, "pretraining" in n) for n in names}
    for n in names:  # warm-up
        step(*setups[n], batches[n], device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(*setups[n], batches[n], device)
            times[n].append(args.steps * args.batch_size / (time.perf_counter() - t0))
            print(f"round {r + 1}: {n}: {times[n][-1]:.1f} slices/s", flush=True)
    result = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "spatial_size": args.spatial_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "slices_per_s": {n: statistics.median(v) for n, v in times.items()},
        "all": times,
    }
    base = result["slices_per_s"].get("baseline")
    if args.loader:
        result["loader_slices_per_s"] = time_loader(
            {**overrides, "output_dir": os.path.join(ROOT, "runs"), "qa_slices": "mask"}, batches=8
        )
    lines = [
        f"QA training throughput, {args.spatial_size}x{args.spatial_size} slices, batch {args.batch_size}, "
        f"{device} ({result['threads']} threads), median of {args.rounds} rounds x {args.steps} steps",
        "",
        "| strategy | slices/s | vs baseline |",
        "|---|---|---|",
    ]
    for n, v in result["slices_per_s"].items():
        lines.append(f"| {n} | {v:.1f} | {v / base:.2f} |" if base else f"| {n} | {v:.1f} | |")
    if args.loader:
        lines.append(
            f"| data loader (augmentation, demo set) | {result['loader_slices_per_s']:.1f} | "
            f"{result['loader_slices_per_s'] / base:.2f} |"
            if base
            else ""
        )
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
