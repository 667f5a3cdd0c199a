"""DMD2's GAN discriminator: a small head on the critic UNet's bottleneck (encoder + mid block).

Skipping the decoder makes a discriminator pass about half a UNet forward. Head: repeated
[conv 4x4 stride 2, GroupNorm, SiLU] down to at most 4x4, a conv covering what is left (4x4
stride 4 in the paper) to 1x1, GroupNorm, SiLU, and a 1x1 conv to one logit.
"""

import math

import torch
from torch import nn


def bottleneck(unet, x_t: torch.Tensor, t: torch.Tensor, conditioning: dict) -> torch.Tensor:
    """A diffusers UNet's features after its down blocks and mid block: (B, C_mid, H/2^(L-1), W/2^(L-1)).

    `conditioning`: the UNet's keyword arguments for the labels (workers/models/conditioning.py), as in a
    full forward. UNet2DModel (class labels) and UNet2DConditionModel (text, SDXL's added
    conditioning) each follow their own forward up to the mid block.
    """
    if not hasattr(unet, "get_time_embed"):  # UNet2DModel
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
        if unet.class_embedding is not None:
            emb = emb + unet.class_embedding(conditioning["class_labels"]).to(dtype=unet.dtype)
        text = {}
    else:  # UNet2DConditionModel, as in its forward
        context, added = conditioning.get("encoder_hidden_states"), conditioning.get("added_cond_kwargs")
        emb = unet.time_embedding(unet.get_time_embed(sample=x_t, timestep=t), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added)
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        text = {
            "encoder_hidden_states": unet.process_encoder_hidden_states(
                encoder_hidden_states=context, added_cond_kwargs=added
            )
        }
    sample = unet.conv_in(x_t)
    for block in unet.down_blocks:
        sample, _ = block(
            hidden_states=sample, temb=emb, **(text if getattr(block, "has_cross_attention", False) else {})
        )
    if unet.mid_block is None:
        return sample
    return unet.mid_block(sample, emb, **(text if getattr(unet.mid_block, "has_cross_attention", False) else {}))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class GanHead(nn.Module):
    """Bottleneck features (B, C, S, S) -> one logit per sample (B,)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        while size > 4:
            layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), group_norm(channels), nn.SiLU()]
            size //= 2
        # At 1x1 a group of gcd(32, C) channels holds one or two values, which normalise to constants
        # or signs; one group over all channels keeps the logit a function of the input.
        layers += [
            nn.Conv2d(channels, channels, size, stride=size),
            nn.GroupNorm(1, channels),
            nn.SiLU(),
            nn.Conv2d(channels, 1, 1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).flatten()  # (B,)


def head_for(unet) -> GanHead:
    """A GanHead sized for this UNet2DModel's bottleneck."""
    channels = unet.config.block_out_channels[-1]
    size = unet.config.sample_size // 2 ** (len(unet.config.block_out_channels) - 1)
    return GanHead(channels, size)
