"""What every role actor shares: its place in its role's own DeepSpeed world, threads, keyed randomness, timing."""

import time
from contextlib import contextmanager

import torch

from workers.roles.messages import Key, message_bytes
from workers.roles.metrics import RoleMetrics
from workers.seeding import derive_seed


class RoleWorker:
    """Base of the Teacher, Critic and Generator actors: one rank of one role's world."""

    role = "role"

    def __init__(self, rank: int, world_size: int, threads: int, seed: int, run: str | None = ""):
        self.rank, self.world_size, self.seed = rank, world_size, seed
        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # fresh modules (the critic's GAN head) start the same in every run of this seed
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.seconds: dict[str, float] = {}
        self.real_batches, self.real_batches_taken = None, 0  # real images, for roles that need them
        self._store = None  # rank 0's rendezvous store, held open from host_rendezvous until the world forms
        self.metrics = None if run is None else RoleMetrics(self.role, run)  # None: no Ray (in-process benchmarks)

    def ping(self) -> bool:
        """A no-op call: a rank that answers it is alive."""
        return True

    def host_rendezvous(self) -> tuple[str, int]:
        """Rank 0 opens its role's rendezvous store; returns this node's IP and the store's port."""
        import ray

        from workers.parallel.deepspeed import rendezvous_store

        self._store = rendezvous_store(self.world_size, ray.util.get_node_ip_address())
        return self._store.host, self._store.port

    def join_world(self, master_addr: str, master_port: int) -> str:
        """Join this role's own process group through rank 0's store; returns the node id."""
        import ray

        from workers.parallel.deepspeed import join_process_group, rendezvous_store

        store = self._store or rendezvous_store(self.world_size, master_addr, master_port)
        join_process_group(store, self.rank, self.world_size, self.device)
        return ray.get_runtime_context().get_node_id()

    def rng(self, key: Key) -> torch.Generator:
        """A torch RNG for one update's draws: the same (run seed, role, rank, key), the same draws, so a
        resumed run repeats an uninterrupted one; another role or rank never shares the stream."""
        return torch.Generator().manual_seed(derive_seed(self.seed, self.role, self.rank, *key))

    def open_real_batches(self, real_data, batch_size: int, image_shape: tuple[int, int, int]) -> None:
        """Start `self.real_batches`: endless (images, labels) from this rank's Ray Data split, epoch after epoch.

        The shuffle is seeded per (run seed, epoch, rank), so a resumed run that skips the batches it
        already took (`restart_real_batches`) sees the same stream as an uninterrupted one.
        """
        if real_data is None:
            raise ValueError(
                f"the {self.role} needs real data (GAN or forward-noised inputs) but got no Ray Data split"
            )
        import logging

        # Ray Data logs each pass over a split at INFO: a line per epoch of real batches, in the job's output.
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        self._real_source = (real_data, batch_size, image_shape)
        self.real_batches = self._stream(real_data, batch_size, image_shape, 0)

    def restart_real_batches(self, taken: int) -> None:
        """Fast-forward the real-data stream past `taken` batches (after a checkpoint load); no-op without real data."""
        if self.real_batches is not None:
            self.real_batches_taken = taken
            self.real_batches = self._stream(*self._real_source, taken)

    def next_real_batch(self):
        self.real_batches_taken += 1
        return next(self.real_batches)

    def _stream(self, iterator, batch_size: int, image_shape: tuple[int, int, int], skip: int):
        from workers.data.streams import batch_to_arrays

        taken, epoch = 0, 0
        while True:
            seed = derive_seed(self.seed, self.role, self.rank, "data", epoch) % 2**31
            for batch in iterator.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=4 * batch_size,
                local_shuffle_seed=seed,
            ):
                taken += 1
                if taken > skip:
                    yield batch_to_arrays(batch, image_shape)
            epoch += 1

    @contextmanager
    def timed(self, name: str, images: int = 0, received: tuple = ()):
        """Time an endpoint's work: for `take_seconds` (MLflow) and the live dashboard metrics."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self.metrics is not None:
            self.metrics.call(name, seconds, images)
            self.metrics.received(name, message_bytes(*received))

    def take_seconds(self) -> dict[str, float]:
        """Compute seconds per endpoint since the last call (the driver's per-role step times)."""
        seconds, self.seconds = self.seconds, {}
        return {f"{self.role}/{name}_seconds": value for name, value in seconds.items()}
