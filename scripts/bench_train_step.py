"""Seconds per training step of the paper's class-conditional networks (docs/calibration.md, "Networks as the paper").

    OMP_NUM_THREADS=1 python scripts/bench_train_step.py --arch resnet --widths 32,48,64,96,128 --steps 4

Times forward + backward + Adam step on a random batch of 128 32x32 images with labels, one torch thread,
and prints the wall time and the process CPU time of every step (on a shared machine the CPU time is
the stable number: the wall time depends on the other jobs).
"""

import argparse
import time

import torch

from creativity_fast.nets import build_network, vp_noise
from creativity_fast.training import preset_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet", choices=("resnet", "unet"))
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    for width in (int(w) for w in args.widths.split(",")):
        cfg = preset_config("paper", args.arch, width=width, num_classes=10)
        torch.manual_seed(0)
        net = build_network(cfg.network_config(1))
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        x0 = torch.rand(args.batch_size, 1, args.size, args.size) * 2 - 1
        y = torch.randint(0, 10, (args.batch_size,))
        rows = []
        for _ in range(args.steps):
            wall, cpu = time.perf_counter(), time.process_time()
            t = torch.rand(args.batch_size)
            eps = torch.randn_like(x0)
            loss = torch.nn.functional.mse_loss(net(vp_noise(x0, t, eps), t, y), eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rows.append((time.perf_counter() - wall, time.process_time() - cpu))
        n = sum(p.numel() for p in net.parameters())
        print(f"{args.arch} width {width}: {n} parameters; (wall s, CPU s) per step: "
              + ", ".join(f"({w:.2f}, {c:.2f})" for w, c in rows), flush=True)


if __name__ == "__main__":
    main()
