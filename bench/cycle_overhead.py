"""One TTUR cycle (N critic updates + one generator update) through the Ray role actors, against the
same endpoint methods called in one process. Reports the ratio and where the actor time goes.

    python bench/cycle_overhead.py [--teacher runs/demo/teacher] [--cycles 10] [--batch 128] [--set KEY=VALUE ...]
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def in_process_roles(config, num_train_timesteps: int):
    """Teacher, critic and generator as plain objects in this process (one gloo world of size 1), on every core."""
    from orchestrator.setups import role_setups
    from workers.parallel.deepspeed import join_process_group, rendezvous_store
    from workers.roles.critic import Critic
    from workers.roles.generator import Generator
    from workers.roles.teacher import Teacher

    join_process_group(rendezvous_store(1, "127.0.0.1"), 0, 1, "cpu")
    teacher_setup, critic_setup, generator_setup = role_setups(config, num_train_timesteps)
    teacher, critic, generator = (
        role(0, 1, os.cpu_count() or 1, config.seed, run=None) for role in (Teacher, Critic, Generator)
    )
    teacher_dir = str(Path(config.teacher).resolve())
    teacher.setup(teacher_dir, teacher_setup)
    critic.setup(teacher_dir, critic_setup, real_data=None)
    generator.setup(teacher_dir, generator_setup)
    return teacher, critic, generator


def in_process_cycle(teacher, critic, generator, config, step: int) -> None:
    from orchestrator.cycle import cycle_keys
    from workers.roles.messages import GenerateRequest

    keys = cycle_keys(config, step)  # the same updates in the same order as orchestrator.cycle.cycle
    for key in keys.fresh:
        critic.train_step(key, generator.generate(GenerateRequest(key, 0, keep_graph=False, shards=1)))
    fake = generator.generate(GenerateRequest(keys.generator, 0, keep_graph=True, shards=1))
    generator.update(1, teacher.answer(fake), critic.feedback(fake))
    if keys.beside_generator is not None:
        critic.train_step(keys.beside_generator, fake)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/teacher"))
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override digits.yaml, as in jobs.distill"
    )
    args = parser.parse_args(argv)

    import ray

    from orchestrator.config import DistillConfig
    from orchestrator.config_loading import load_config
    from orchestrator.distill import cycle, mean_metrics, start_roles
    from orchestrator.placement import connect
    from orchestrator.preflight import check_inputs

    # The GAN is off here: real-data streaming is measured with the roles, not with the cycle math.
    overrides = [f"teacher={args.teacher}", f"batch_size={args.batch}", "dmd2.gan_generator_weight=0", *args.set]
    config = load_config(DistillConfig, Path("jobs/configs/digits.yaml"), overrides)
    check_inputs(config)  # a missing teacher is one line now, not a traceback from inside an actor
    connect(4)
    groups = start_roles(config, 1000)
    cycle(groups, config, 0, np.random.default_rng(0))  # warm-up
    [g.call("take_seconds") for g in groups.all()]
    start = time.perf_counter()
    for step in range(1, args.cycles + 1):
        cycle(groups, config, step, np.random.default_rng(step))
    actor_seconds = (time.perf_counter() - start) / args.cycles
    compute = mean_metrics([s for g in groups.all() for s in g.call("take_seconds")])
    compute = {k: v / args.cycles for k, v in compute.items()}
    groups.shutdown()
    ray.shutdown()

    roles = in_process_roles(config, 1000)
    in_process_cycle(*roles, config, 0)
    start = time.perf_counter()
    for step in range(1, args.cycles + 1):
        in_process_cycle(*roles, config, step)
    single_seconds = (time.perf_counter() - start) / args.cycles

    busy = sum(compute.values())
    result = {
        "batch": args.batch,
        "critic_updates_per_generator_update": config.dmd2.critic_updates_per_generator_update,
        "single_process_cycle_s": single_seconds,
        "role_actor_cycle_s": actor_seconds,
        "ratio": actor_seconds / single_seconds,
        "actor_compute_s_per_cycle": compute,
        "actor_compute_sum_s": busy,
        "transport_and_waiting_s": actor_seconds - busy,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from jobs.cli import run_main

    run_main(main)
