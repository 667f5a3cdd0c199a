"""Write a tiny random text-to-image teacher as a standard diffusers pipeline folder.

    python -m jobs.make_tiny_teacher --layout sd15 --out runs/tiny-sd15
    python -m jobs.make_tiny_teacher --layout sdxl --out runs/tiny-sdxl --seed 1 --overwrite

The folder has the Stable Diffusion 1.5 or SDXL layout (UNet, CLIP text encoder(s) and tokenizer(s),
VAE, scheduler) at 16x16 RGB with 4x8x8 latents, so code that loads real SD checkpoints can be
exercised on CPU in seconds and without the HF hub. Weights are random but fixed by --seed.
"""

import argparse
import json
import math
import shutil
from pathlib import Path

from jobs.cli import run_main
from workers.errors import ConfigError

LAYOUTS = ("sd15", "sdxl")
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}
TEXT_WIDTH = 32  # hidden size of each CLIP text encoder, and the second encoder's projection
MAX_TOKENS = 16
# Whole words get merges so that prompts such as "a handwritten digit 7" fit in MAX_TOKENS;
# any other text still tokenizes (character by character) without unknown tokens.
WORDS = (
    "a",
    "an",
    "the",
    "of",
    "photo",
    "image",
    "picture",
    "handwritten",
    "digit",
    "number",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE: all 256 byte symbols (so no text is ever unknown), plus WORDS."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for symbol in sorted(ByteLevel.alphabet()):
            vocab[symbol + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if merged + piece not in vocab:
                merges.append((merged, piece))
                vocab[merged + piece] = len(vocab)
            merged += piece
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1  # specials last, as in CLIP's own vocab
    return vocab, merges


def _write_tokenizer_files(folder: Path) -> None:
    # transformers 5 saves only tokenizer.json; vocab.json + merges.txt let transformers 4 load it too
    vocab, merges = _vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tokenizer():  # -> transformers.CLIPTokenizer
    from transformers import CLIPTokenizer

    # Built from the data, not from files, so the saved tokenizer_config.json carries no
    # loading arguments (transformers 5 saves e.g. is_local from a from_pretrained call)
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _text_encoder(tokenizer, seed: int, with_projection: bool):  # -> CLIPTextModel(WithProjection)
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def build_tiny_pipeline(layout: str, seed: int = 0):  # -> StableDiffusion(XL)Pipeline
    """The tiny random pipeline, in memory; `make_tiny_teacher` saves it."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout is {layout!r}: choose one of {', '.join(LAYOUTS)}")
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    xl = layout == "sdxl"
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.13025 if xl else 0.18215,
    )  # the real SDXL / SD 1.5 VAE factors
    unet_sizes = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    }  # diffusers reads this legacy name as the number of heads
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(tokenizer, seed, with_projection=False)
    if not xl:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_sizes, cross_attention_dim=TEXT_WIDTH)
        scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False)
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet.eval(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    time_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **unet_sizes,
        cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' hidden states, concatenated
        use_linear_projection=True,
        transformer_layers_per_block=1,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # six size/crop numbers, each embedded in time_dim, plus the second encoder's pooled text
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_WIDTH,
    )
    scheduler = EulerDiscreteScheduler(**SCHEDULE, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=_text_encoder(tokenizer, seed + 1, True),
        tokenizer=tokenizer,
        tokenizer_2=_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def make_tiny_teacher(layout: str, out: Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny `layout` pipeline (safetensors only) to `out` and return `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"output folder {out} is not empty: pass --overwrite to replace it, or choose another --out"
            )
        # Deleting is only safe for a folder we can tell is a pipeline, never e.g. `--out .`
        if not (out / "model_index.json").is_file():
            raise ConfigError(
                f"output folder {out} is not empty and has no model_index.json, so it is "
                "not a pipeline folder --overwrite may replace: choose another --out"
            )
    pipeline = build_tiny_pipeline(layout, seed)
    if out.is_dir():
        shutil.rmtree(out)  # so no stale files of an earlier pipeline survive next to the new ones
    pipeline.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        if (out / name).is_dir():
            _write_tokenizer_files(out / name)
    return out


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per component, read from the folder's safetensors headers."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for file in sorted(Path(folder).glob("*/*.safetensors")):
        with safe_open(str(file), framework="np") as weights:
            size = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118 (not a dict)
        counts[file.parent.name] = counts.get(file.parent.name, 0) + size
    return counts


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m jobs.make_tiny_teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=LAYOUTS, required=True, help="Stable Diffusion 1.5 or SDXL layout")
    parser.add_argument("--out", type=Path, required=True, help="output folder (written as a diffusers pipeline)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same weights")
    parser.add_argument("--overwrite", action="store_true", help="replace a pipeline folder already in --out")
    args = parser.parse_args(argv)
    out = make_tiny_teacher(args.layout, args.out, args.seed, args.overwrite)
    counts = ", ".join(f"{name} {count:,}" for name, count in parameter_counts(out).items())
    print(f"wrote a tiny random {args.layout} teacher (seed {args.seed}; parameters: {counts}) to {out}")
    return out


if __name__ == "__main__":
    run_main(main)
