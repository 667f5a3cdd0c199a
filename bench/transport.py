"""Transport per generator update, per role pair: Ray's object store against direct tensor transport (RDT).

    python bench/transport.py [--preset digits|sd15|sdxl] [--repeats 20] [--critic-updates 5]
                              [--no-srl] [--no-gan] [--compute-json PATH] [--out PATH]

Builds the exact messages of one TTUR cycle (orchestrator.distill.cycle, one rank per role):
N generator->critic GeneratedBatch for the critic updates, then for the generator update one
GeneratedBatch to the teacher and one to the critic, a TeacherAnswer (x0, srl_target) and a
CriticFeedback (x0, gan_grad) back. Bytes are the arrays' nbytes. Time is one message sent between
two real actors on a local cluster, from "receiver.use.remote(ref)" to its result, with the
message already produced by the sender (so generation is excluded): the object store path sends
the dataclass of numpy arrays and the receiver does what the roles do (workers.messages.as_tensor,
which copies the read-only views, then a sum); the RDT path returns the same dataclass holding
torch tensors from a `@ray.method(tensor_transport="gloo")` method and the receiver sums them.
"empty call" is a payload-free actor call: the per-call floor under every row.
--compute-json {"<role pair>": seconds per generator update} adds a transport/compute column.
"""

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from workers.roles.messages import CriticFeedback, GeneratedBatch, TeacherAnswer, as_tensor

# (batch per generator update, C, H, W): the digits job as shipped, SD1.5 and SDXL latents.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "digits": (64, 1, 8, 8),
    "sd15": (8, 4, 64, 64),
    "sdxl": (4, 4, 128, 128),
}
# Role pair -> message kind; the critic-update batches are the same kind, sent N times per update.
PAIRS: dict[str, str] = {
    "generator->critic (critic updates)": "batch",
    "generator->teacher": "batch",
    "generator->critic": "batch",
    "teacher->generator": "answer",
    "critic->generator": "feedback",
}
TRANSPORTS = ("object_store", "rdt_gloo")


def message(kind: str, shape: tuple[int, int, int, int], srl: bool, gan: bool, seed: int) -> Any:
    """One message as the roles build it (numpy arrays; float32 images, int64 timesteps/labels)."""
    rng = np.random.default_rng(seed)
    image = lambda: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    ints = lambda: rng.integers(0, 1000, shape[0], dtype=np.int64)  # noqa: E731
    if kind == "batch":
        return GeneratedBatch(image(), image(), ints(), ints(), ints(), (seed,))
    if kind == "answer":
        return TeacherAnswer(image(), image() if srl else None)
    return CriticFeedback(image(), image() if gan else None, 0.0)


def arrays(msg: Any) -> list[Any]:
    return [v for f in fields(msg) if hasattr(v := getattr(msg, f.name), "shape")]


def nbytes(msg: Any) -> int:
    return sum(int(a.nbytes) for a in arrays(msg))


def to_torch(msg: Any) -> Any:
    """The same dataclass holding torch tensors: RDT only moves torch tensors out of band."""
    import torch

    kwargs = {f.name: getattr(msg, f.name) for f in fields(msg)}
    return type(msg)(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()})


def make_actor_class():
    import ray

    # enable_tensor_transport is required on the class for any tensor_transport= method.
    @ray.remote(num_cpus=1, enable_tensor_transport=True)
    class Endpoint:
        """Sender and receiver in one class: both ends must join the same gloo collective group."""

        def make(self, kind: str, shape: tuple[int, int, int, int], srl: bool, gan: bool, seed: int) -> Any:
            return message(kind, shape, srl, gan, seed)

        @ray.method(tensor_transport="gloo")
        def make_rdt(self, kind: str, shape: tuple[int, int, int, int], srl: bool, gan: bool, seed: int) -> Any:
            return to_torch(message(kind, shape, srl, gan, seed))

        def use(self, msg: Any) -> float:
            # Touch every byte as the generator/teacher/critic do: to torch (copy when read-only), then reduce.
            return float(
                sum(float(as_tensor(a).sum()) if isinstance(a, np.ndarray) else float(a.sum()) for a in arrays(msg))
            )

        def noop(self) -> None:
            return None

    return Endpoint


def timed_ms(call, repeats: int, warmup: int) -> list[float]:
    """Milliseconds per call after `warmup` untimed calls; `call()` returns the ref to wait on."""
    import ray

    out = []
    for i in range(warmup + repeats):
        ref, start = call(i)
        ray.get(ref)
        if i >= warmup:
            out.append((time.perf_counter() - start) * 1e3)
    return out


def measure(
    sender, receiver, kind: str, shape, srl: bool, gan: bool, transport: str, repeats: int, warmup: int
) -> list[float]:
    import ray

    make = sender.make if transport == "object_store" else sender.make_rdt

    def call(i: int):
        ref = make.remote(kind, shape, srl, gan, i)
        ray.wait([ref])  # produced and sealed on the sender; only the hand-over is timed below
        start = time.perf_counter()
        return receiver.use.remote(ref), start

    return timed_ms(call, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append", help="repeatable; default all")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--critic-updates", type=int, default=5)
    parser.add_argument(
        "--no-srl", action="store_true", help="TeacherAnswer without srl_target (the one-step digits job)"
    )
    parser.add_argument("--no-gan", action="store_true", help="CriticFeedback without gan_grad")
    parser.add_argument("--compute-json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    compute: dict[str, float] = json.loads(args.compute_json.read_text()) if args.compute_json else {}
    srl, gan = not args.no_srl, not args.no_gan

    import ray
    from ray.experimental.collective import create_collective_group

    # Our own cluster only; never `ray stop` (others share this machine).
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    endpoint = make_actor_class()
    sender, receiver = endpoint.remote(), endpoint.remote()
    rows: list[dict[str, Any]] = []
    rdt_error = None
    try:
        create_collective_group([sender, receiver], backend="torch_gloo")
    except Exception as error:  # noqa: BLE001  (reported verbatim, object store still measured)
        rdt_error = f"{type(error).__name__}: {error}"
    empty = timed_ms(lambda i: (receiver.noop.remote(), time.perf_counter()), args.repeats, args.warmup)
    for preset in args.preset or list(PRESETS):
        shape = PRESETS[preset]
        rows.append(
            {
                "preset": preset,
                "pair": "empty call",
                "transport": "-",
                "messages": 1,
                "bytes_per_update": 0,
                "median_ms": float(np.median(empty)),
                "p90_ms": float(np.percentile(empty, 90)),
                "ms_per_update": float(np.median(empty)),
            }
        )
        for pair, kind in PAIRS.items():
            count = args.critic_updates if "critic updates" in pair else 1
            size = nbytes(message(kind, shape, srl, gan, 0)) * count
            for transport in TRANSPORTS:
                if transport == "rdt_gloo" and rdt_error:
                    continue
                try:
                    ms = measure(sender, receiver, kind, shape, srl, gan, transport, args.repeats, args.warmup)
                except Exception as error:  # noqa: BLE001
                    rdt_error = rdt_error or f"{preset}/{pair}: {type(error).__name__}: {error}"
                    continue
                per_update = float(np.median(ms)) * count
                row = {
                    "preset": preset,
                    "pair": pair,
                    "transport": transport,
                    "messages": count,
                    "bytes_per_update": size,
                    "median_ms": float(np.median(ms)),
                    "p90_ms": float(np.percentile(ms, 90)),
                    "ms_per_update": per_update,
                    "mb_per_s": size / 1e6 / (per_update / 1e3),
                }
                if pair in compute:
                    row["transport_over_compute"] = per_update / 1e3 / compute[pair]
                rows.append(row)
    ray.shutdown()

    print("| preset | role pair | transport | msgs | MB/update | median ms/msg | p90 ms/msg | ms/update | MB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['pair']} | {r['transport']} | {r['messages']} | {r['bytes_per_update'] / 1e6:.3f} | "
            f"{r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['ms_per_update']:.2f} | {r.get('mb_per_s', 0.0):.0f} |"
        )
    for preset in args.preset or list(PRESETS):
        totals = {
            t: sum(r["ms_per_update"] for r in rows if r["preset"] == preset and r["transport"] == t)
            for t in TRANSPORTS
        }
        print(
            f"{preset}: ms per generator update (all pairs, serial sum): "
            + ", ".join(f"{t} {v:.1f}" for t, v in totals.items())
        )
    if rdt_error:
        print(f"RDT error: {rdt_error}")
    result = {
        "presets": {p: PRESETS[p] for p in args.preset or PRESETS},
        "critic_updates": args.critic_updates,
        "srl": srl,
        "gan": gan,
        "repeats": args.repeats,
        "rows": rows,
        "rdt_error": rdt_error,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
