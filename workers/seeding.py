"""Seeds derived from named parts: every random draw of a run is keyed, and different keys never share a stream."""

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, role, rank, step, update, shard, ...): a hash of the whole key
    (numpy's SeedSequence), so no two keys meet the way `step * 1000 + i` does once i reaches 1000,
    and two roles drawing for the same update get independent streams."""
    entropy = [int.from_bytes(p.encode(), "little") if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
