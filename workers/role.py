"""What every role actor shares: its place in its role's own DeepSpeed world, threads, timing."""

import os
import socket
import time
from contextlib import contextmanager

import torch


class RoleWorker:
    """Base of the Teacher, Critic and Generator actors: one rank of one role's world."""

    role = "role"

    def __init__(self, rank: int, world_size: int, threads: int, seed: int):
        self.rank, self.world_size, self.seed = rank, world_size, seed
        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # fresh modules (the critic's GAN head) start the same in every run of this seed
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.seconds: dict[str, float] = {}

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the role's rendezvous."""
        import ray

        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join_world(self, master_addr: str, master_port: int) -> str:
        """Join this role's own process group (gloo on CPU, nccl on GPU); returns the node id."""
        import deepspeed
        import ray

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="nccl" if self.device == "cuda" else "gloo", verbose=False)
        return ray.get_runtime_context().get_node_id()

    def generator_for(self, seed: int) -> torch.Generator:
        """A torch RNG for one call: same (run seed, call seed, rank), same draws; resumable by construction."""
        return torch.Generator().manual_seed(hash((self.seed, seed, self.rank)) % (2**63))

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def take_seconds(self) -> dict[str, float]:
        """Compute seconds per endpoint since the last call (the driver's per-role step times)."""
        seconds, self.seconds = self.seconds, {}
        return {f"{self.role}/{name}_seconds": value for name, value in seconds.items()}
