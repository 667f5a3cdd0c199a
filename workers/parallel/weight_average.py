"""An exponential moving average (EMA) of a trained role's weights, kept beside DeepSpeed's own copy.

Each rank averages the values it holds itself: the whole tensor under ZeRO 0-2, its partition
(`ds_tensor`) under ZeRO-3. Swapping the average into those places makes every existing path
(ZeRO-3's gather, `full_state_dict`, sampling) see the averaged model without a second one.
"""

from contextlib import contextmanager
from pathlib import Path

import torch

UPDATES = "updates"  # the count of updates, saved beside the averaged tensors (the warm-up depends on it)


def local_values(param: torch.nn.Parameter) -> torch.Tensor:
    """The values of `param` this rank holds: its ZeRO-3 partition, else the parameter itself."""
    return getattr(param, "ds_tensor", param.data)


class WeightAverage:
    """average = decay * average + (1 - decay) * weights after every optimizer step, in fp32 (bf16 would
    round away updates of size (1 - decay) * weight), over the parameters that train.

    `warmup`: the decay of update n is min(decay, (1 + n) / (10 + n)), as diffusers' EMAModel, so a model
    trained from random weights does not keep them in its average (decay 0.999 alone keeps 5% of the
    initial weights after 3,000 updates, which shows as speckle in the samples)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay {decay} must be in [0, 1)")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.params = [p for p in model.parameters() if p.requires_grad]  # a LoRA's adapter only
        self.average = [local_values(p).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for average, param in zip(self.average, self.params):
            average.lerp_(local_values(param).float(), 1.0 - decay)
        self.updates += 1

    @contextmanager
    def swapped_in(self):
        """Within the block the model holds the average; its trained weights come back after."""
        with torch.no_grad():
            trained = [local_values(p).clone() for p in self.params]
            for average, param in zip(self.average, self.params):
                local_values(param).copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for values, param in zip(trained, self.params):
                    local_values(param).copy_(values)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {str(i): a.contiguous() for i, a in enumerate(self.average)}
        save_file(tensors | {UPDATES: torch.tensor(self.updates)}, str(path))

    def load(self, path: Path) -> None:
        """The average saved at `path`; a checkpoint written without one starts it at the loaded weights."""
        from safetensors.torch import load_file

        if not path.exists():
            print(f"note: {path.parent} holds no weight average; starting it from the loaded weights")
            self.average = [local_values(p).detach().float().clone() for p in self.params]
            return
        saved = load_file(str(path))
        self.updates = int(saved.pop(UPDATES, torch.tensor(0)))
        if len(saved) != len(self.average):
            raise ValueError(
                f"{path} holds {len(saved)} averaged tensors, this model trains {len(self.average)}: was it saved "
                f"by another student?"
            )
        self.average = [saved[str(i)] for i in range(len(saved))]
