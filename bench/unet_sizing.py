"""How fast candidate teacher UNets train and sample on this machine: the measurement behind a config's model size.

    python bench/unet_sizing.py [--size 32] [--batch 64] [--threads 2] [--steps 5]

For each candidate class-conditional `UNet2DModel` it prints the parameters, the seconds of one
training step (forward, backward, AdamW) at --batch, and the milliseconds per image of one
inference forward at batch 250; from those, the minutes of a 1,000-step teacher and of sampling
1,000 images with 50 guided DDIM steps (two passes per step).
"""

import argparse
import time
from dataclasses import asdict

import torch

CANDIDATES = {
    "16-32-64": dict(block_out_channels=(16, 32, 64), norm_num_groups=8),
    "32-64-64": dict(block_out_channels=(32, 64, 64), norm_num_groups=8),
    "32-64-128": dict(block_out_channels=(32, 64, 128), norm_num_groups=8),
    "32-64-128-attn": dict(block_out_channels=(32, 64, 128), norm_num_groups=8, attention=True),
    "64-128-128": dict(block_out_channels=(64, 128, 128), norm_num_groups=8),
}


def measure(name: str, size: int, batch: int, steps: int) -> dict:
    from orchestrator.config import UNetConfig
    from workers.models.folders import build_unet

    unet = build_unet(10, **asdict(UNetConfig(sample_size=size, channels=1, **CANDIDATES[name])))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x, t, y = torch.randn(batch, 1, size, size), torch.randint(0, 1000, (batch,)), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        loss = (unet(x, t, class_labels=y).sample - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    train_s = sorted(times[1:])[len(times[1:]) // 2]
    xs, ts, ys = torch.randn(250, 1, size, size), torch.randint(0, 1000, (250,)), torch.randint(0, 10, (250,))
    with torch.no_grad():
        unet(xs, ts, class_labels=ys)
        start = time.perf_counter()
        for _ in range(2):
            unet(xs, ts, class_labels=ys)
        infer_ms = (time.perf_counter() - start) / 2 / 250 * 1000
    params = sum(p.numel() for p in unet.parameters())
    return {
        "model": name,
        "params_M": params / 1e6,
        "train_step_s": train_s,
        "infer_ms_per_image": infer_ms,
        "teacher_min_per_1000_steps": train_s * 1000 / 60,
        "sample_min_1000_images_50_guided_steps": infer_ms * 100 * 1000 / 1000 / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.size}x{args.size}, batch {args.batch}, {args.threads} threads")
    for name in args.models:
        row = measure(name, args.size, args.batch, args.steps)
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
