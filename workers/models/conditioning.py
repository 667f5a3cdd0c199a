"""What a label means to the UNet: a class id, or the index of a prompt in a cached table of text embeddings.

Messages between roles carry only int64 labels (b,). Each role turns them into the UNet's keyword
arguments here, so text embeddings are computed once per prompt (by `jobs.encode_latents`) and
never by a role, and never travel between roles. In both kinds label `count` is the null label
that classifier-free guidance uses: the null class, or the unconditional prompt (the empty
prompt's embedding for SD 1.5, zeros for SDXL).

The prompt table is a safetensors file next to the latent Parquet shards:

    prompt_embeds          (P+1, L, D)  the text encoder's (SDXL: both encoders') last hidden states;
                                        row P: the unconditional prompt
    pooled_prompt_embeds   (P+1, D2)    SDXL only: the second encoder's pooled projection
    time_ids               (6,)         SDXL only: add_time_ids (original size, crop top-left, target size)

Rows are read lazily from the memory-mapped file, so a table of many prompts costs memory only
for the rows a batch uses.
"""

from pathlib import Path

import torch

from workers.errors import DataError

PROMPT_TABLE = "prompts.safetensors"


class ClassLabels:
    """Class ids 0..count-1 for a class-conditional UNet2DModel (count 0: unconditional)."""

    def __init__(self, count: int):
        self.count = count

    @property
    def null_label(self) -> int:
        return self.count

    def unet_kwargs(self, labels: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> dict:
        return {"class_labels": labels} if self.count else {}


class PromptTable:
    """Prompt indices 0..count-1 for a UNet2DConditionModel, from a prompt table file (module docstring)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from safetensors import safe_open

        self.path, self.device = Path(path), device
        if not self.path.is_file():
            raise DataError(
                f"prompt table {self.path} does not exist: encode the data set with `python -m jobs.encode_latents`"
            )
        self._file = safe_open(str(self.path), framework="pt")
        names = set(self._file.keys())
        if "prompt_embeds" not in names:
            raise DataError(
                f"{self.path} holds no prompt_embeds: re-encode the data set with `python -m jobs.encode_latents`"
            )
        self._embeds = self._file.get_slice("prompt_embeds")
        self.count = self._embeds.get_shape()[0] - 1  # the last row is the unconditional prompt
        self._pooled = self._file.get_slice("pooled_prompt_embeds") if "pooled_prompt_embeds" in names else None
        self.time_ids = self._file.get_tensor("time_ids").to(device) if "time_ids" in names else None

    @property
    def null_label(self) -> int:
        return self.count

    @property
    def embedding_shape(self) -> tuple[int, int]:
        """(L, D): tokens and width of one prompt's embedding."""
        return tuple(self._embeds.get_shape()[1:])

    def _rows(self, table, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows (b, ...) for `labels`; each distinct prompt is read from the file once per call."""
        distinct, where = labels.unique(return_inverse=True)
        return torch.cat([table[i : i + 1] for i in distinct.tolist()])[where].to(self.device, dtype)

    def unet_kwargs(self, labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict:
        """The UNet's conditioning for `labels` (b,), in the UNet's weight dtype."""
        kwargs = {"encoder_hidden_states": self._rows(self._embeds, labels, dtype)}  # (b, L, D)
        if self._pooled is not None:  # SDXL's extra conditioning: pooled text (b, D2) and add_time_ids (b, 6)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self._rows(self._pooled, labels, dtype),
                "time_ids": self.time_ids.to(dtype).expand(len(labels), -1),
            }
        return kwargs


def write_prompt_table(
    path: Path,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: torch.Tensor | None = None,
    time_ids: torch.Tensor | None = None,
) -> Path:
    """Save a prompt table (rows 0..P-1 the prompts, row P the unconditional prompt) as safetensors."""
    from safetensors.torch import save_file

    tensors = {"prompt_embeds": prompt_embeds}
    if pooled_prompt_embeds is not None:
        tensors |= {"pooled_prompt_embeds": pooled_prompt_embeds, "time_ids": time_ids}
    save_file({k: v.detach().contiguous().cpu().float() for k, v in tensors.items()}, str(path))
    return Path(path)
