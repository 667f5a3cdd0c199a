"""Text-to-image teachers in the Stable Diffusion 1.5 and SDXL layouts, on tiny random pipelines made here:
latents and prompt tables, the GAN bottleneck of a UNet2DConditionModel, config errors, and
distillation through real Ray role groups to a pipeline folder that diffusers loads and runs at
guidance 0 (and, for a LoRA student, LoRA weights that `load_lora_weights` accepts)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import encode_latents
from jobs.make_tiny_teacher import LAYOUTS, make_tiny_teacher
from workers.models.conditioning import PROMPT_TABLE, PromptTable

PROMPT = "a handwritten digit 7"


@pytest.fixture(scope="module")
def tiny_pipelines(tmp_path_factory) -> Path:
    """ROOT/{layout}-teacher (tiny random pipeline) and ROOT/{layout}-latents (the digits encoded for it)."""
    root = tmp_path_factory.mktemp("text_to_image")
    for layout in LAYOUTS:
        make_tiny_teacher(layout, root / f"{layout}-teacher")
        encode_latents.main(["--teacher", str(root / f"{layout}-teacher"), "--out", str(root / f"{layout}-latents")])
    return root


def pipeline(path: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("layout", LAYOUTS)
def test_latent_data_set_holds_the_pipelines_own_latents_and_prompt_embeddings(tiny_pipelines, layout):
    from workers.data.shards import read_arrays
    from workers.data.sources import digits_arrays

    pipe = pipeline(tiny_pipelines / f"{layout}-teacher")
    data = read_arrays(tiny_pipelines / f"{layout}-latents")
    assert data.space == "latents" and data.images.shape == (1797, 4, 8, 8)
    assert [data.class_names[label] for label in data.labels[:20]] == data.captions[:20]  # labels index the prompts
    assert data.captions[0] == f"a handwritten digit {digits_arrays().labels[0]}"
    # The latents are the VAE's scaled posterior mean of the digit resized to 16x16 RGB.
    image = torch.nn.functional.interpolate(
        torch.from_numpy(digits_arrays().images[:1]).expand(-1, 3, -1, -1),
        size=(16, 16),
        mode="bilinear",
        antialias=True,
    ).clamp(-1, 1)
    with torch.no_grad():
        expected = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
    np.testing.assert_allclose(data.images[:1], expected.numpy(), atol=1e-5)

    table = PromptTable(tiny_pipelines / f"{layout}-latents" / PROMPT_TABLE)
    label = data.class_names.index(PROMPT)
    kwargs = table.unet_kwargs(torch.tensor([label, table.null_label]))
    with torch.no_grad():
        ours = pipe.encode_prompt(
            prompt=PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    # Row `label` is the prompt's embedding; the null row is the pipeline's own unconditional one
    # (SD 1.5: the empty prompt's embedding; SDXL: zeros).
    torch.testing.assert_close(kwargs["encoder_hidden_states"], torch.cat([ours[0], ours[1]]))
    if layout == "sd15":
        assert kwargs["encoder_hidden_states"][1].abs().sum() > 0
    else:
        assert kwargs["encoder_hidden_states"][1].abs().sum() == 0
        torch.testing.assert_close(kwargs["added_cond_kwargs"]["text_embeds"], torch.cat([ours[2], ours[3]]))
        time_ids = pipe._get_add_time_ids(
            (16, 16), (0, 0), (16, 16), torch.float32, pipe.text_encoder_2.config.projection_dim
        )  # (1, 6)
        torch.testing.assert_close(kwargs["added_cond_kwargs"]["time_ids"], time_ids.expand(2, -1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bottleneck_of_a_text_unet_is_its_mid_block_output_in_a_full_forward(tiny_pipelines, layout):
    from workers.models.folders import load_model_folder
    from workers.models.gan_head import bottleneck, head_for

    folder = load_model_folder(tiny_pipelines / f"{layout}-teacher")
    conditioning = folder.conditioning(tiny_pipelines / f"{layout}-latents" / PROMPT_TABLE)
    unet, captured = folder.unet, []
    handle = unet.mid_block.register_forward_hook(lambda module, args, output: captured.append(output))
    x_t, t = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0)), torch.tensor([5, 399, 999])
    kwargs = conditioning.unet_kwargs(torch.tensor([0, 4, conditioning.null_label]))
    try:
        with torch.no_grad():
            unet(x_t, t, **kwargs)
            features = bottleneck(unet, x_t, t, kwargs)
    finally:
        handle.remove()
    assert len(captured) == 2 and torch.equal(features, captured[0])
    assert head_for(unet)(features).shape == (3,)


def test_text_teacher_inputs_are_checked_before_any_actor_starts(tiny_pipelines, tiny_teacher):
    from orchestrator.config import DistillConfig
    from orchestrator.config_loading import load_config
    from orchestrator.preflight import check_inputs
    from tests.run_helpers import CONFIGS
    from workers.errors import ConfigError

    def check(*overrides: str) -> str:
        config = load_config(
            DistillConfig,
            CONFIGS / "sd15_tiny.yaml",
            [f"teacher={tiny_pipelines / 'sd15-teacher'}", f"data={tiny_pipelines / 'sd15-latents'}", *overrides],
        )
        with pytest.raises(ConfigError) as error:
            check_inputs(config)
        return str(error.value)

    assert "trains on latents" in check(f"data={tiny_teacher / 'data'}") and "jobs.encode_latents" in check(
        f"data={tiny_teacher / 'data'}"
    )
    assert check("student.timesteps=[999, 499]", "student.sampler=ddim").startswith("student.sampler")
    assert "encoded for another teacher" in check(
        f"data={tiny_pipelines / 'sdxl-latents'}"
    )  # SDXL's text embeddings, SD 1.5's UNet
    assert check(
        f"teacher={tiny_teacher / 'teacher'}", f"data={tiny_teacher / 'data'}", "student.lora_rank=4"
    ).startswith("student.lora_rank")


BF16 = [
    f"roles.{role}.sharding.bf16=true" for role in ("teacher", "critic", "generator")
]  # the memory plan's precision


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layout", "lora_rank", "precision"), [("sd15", 0, []), ("sdxl", 4, BF16)], ids=["sd15", "sdxl-lora-bf16"]
)
def test_distilled_student_is_a_pipeline_diffusers_runs_at_guidance_zero(
    tiny_pipelines, ray_local, tmp_path, monkeypatch, layout, lora_rank, precision
):
    import mlflow

    from jobs import distill
    from tests.run_helpers import CONFIGS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    teacher_dir = tiny_pipelines / f"{layout}-teacher"
    summary = distill.main(
        [
            "--config",
            str(CONFIGS / f"{layout}_tiny.yaml"),
            "--output",
            str(tmp_path / "run"),
            "--set",
            f"teacher={teacher_dir}",
            "--set",
            f"data={tiny_pipelines / f'{layout}-latents'}",
            "--set",
            "generator_steps=2",
            "--set",
            "log_every=1",
            "--set",
            "checkpoint_every=1",
            "--set",
            "eval_num=100",
            "--set",
            f"student.lora_rank={lora_rank}",
            *(arg for override in precision for arg in ("--set", override)),
        ]
    )
    assert summary["generator_steps"] == 2 and np.isfinite(summary["evaluations"][-1]["latent_fd"])
    assert mlflow.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"

    student_dir = Path(summary["student"])
    manifest = json.loads((student_dir / "flashdistill.json").read_text())
    timesteps = manifest["timesteps"]
    assert manifest["kind"] == "student" and timesteps == ([999] if layout == "sd15" else [399])
    card = (student_dir / "README.md").read_text()
    assert ("num_inference_steps=1, guidance_scale=0" in card) if layout == "sd15" else ("timesteps=[399]" in card)

    student, teacher = pipeline(student_dir), pipeline(teacher_dir)
    assert type(student) is type(teacher) and type(student.scheduler).__name__ == "LCMScheduler"
    images = student(
        PROMPT,
        num_inference_steps=len(timesteps),
        timesteps=timesteps,
        guidance_scale=0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    trained = {
        name for name, p in student.unet.named_parameters() if not torch.equal(p, teacher.unet.get_parameter(name))
    }
    assert trained, "the student's UNet is still the teacher's"
    if lora_rank:  # only the attention projections the LoRA wraps changed, and its weights load on the teacher
        assert all(any(f".{target}." in name for target in ("to_q", "to_k", "to_v", "to_out")) for name in trained), (
            sorted(trained)[:3]
        )
        sample = lambda pipe: (
            pipe(
                PROMPT,
                num_inference_steps=1,
                timesteps=timesteps,
                guidance_scale=0,
                output_type="np",
                generator=torch.Generator().manual_seed(0),
            ).images
        )  # noqa: E731
        before = sample(teacher)
        teacher.load_lora_weights(str(student_dir / "lora"))
        assert np.abs(sample(teacher) - before).max() > 1e-4
    else:
        assert "conv_in.weight" in trained
