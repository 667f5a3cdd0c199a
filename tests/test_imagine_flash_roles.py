"""Imagine Flash through the real role actors (Ray, DeepSpeed on gloo), composed with DMD2, and its ablation job."""

from pathlib import Path

import numpy as np
import pytest

from tests.run_helpers import CONFIGS, tiny_config


def test_dm_plus_srl_with_forward_noised_inputs_and_a_noise_corrected_student(tiny_teacher, tmp_path):
    """DM loss + SRL + GAN in one run, the student trained on forward-noised real images, exported
    with the noise-correction scheduler that the project's sampler then loads. With the demo's
    four-step choices: DM timesteps below a later step's input, and uneven step weights."""
    import json

    import ray

    from orchestrator.cycle import cycle
    from orchestrator.role_group import start_roles
    from workers.models.export import export_student
    from workers.models.folders import load_model_folder
    from workers.models.inference import sample_from_folder
    from workers.roles.messages import GenerateRequest

    config = tiny_config(
        tiny_teacher,
        tmp_path / "run",
        "imagine_flash.srl_weight=1.0",
        "imagine_flash.srl_teacher_steps=2",
        "imagine_flash.gamma_jitter=5",
        "student.inputs=forward_noised",
        "student.sampler=noise_corrected_ddim",
        "dmd2.dm_timesteps=below_input",
        "student.step_weights=[1,3]",
        "roles.generator.sharding.gradient_checkpointing=true",
    )  # the switch, through DeepSpeed in an actor
    groups = start_roles(config, 1000)
    try:
        metrics = [cycle(groups, config, step, np.random.default_rng([0, step])) for step in range(2)]
        seconds = ray.get(groups.teacher.actors[0].take_seconds.remote())
        weights = ray.get(groups.generator.actors[0].state.remote())
        # The DM loss's timesteps: the whole range at the first step, at most t_1 = 499 at the second.
        first, second = (
            ray.get(
                groups.generator.actors[0].generate.remote(GenerateRequest((7, 0), k, keep_graph=False, shards=1))
            ).t
            for k in (0, 1)
        )
    finally:
        groups.shutdown()
    assert first.max() > 499 and 20 <= second.min() and second.max() <= 499
    for m in metrics:
        for key in ("generator/dm_loss", "generator/srl_loss", "generator/gan_loss"):
            assert np.isfinite(m[key]), (key, m)
    assert metrics[0]["generator/srl_loss"] > 0
    assert seconds["teacher/srl_target_seconds"] > 0 and seconds["teacher/dm_x0_seconds"] > 0
    student = export_student(
        weights,
        load_model_folder(config.teacher),
        config.student.timesteps,
        config.student.sampler,
        tmp_path / "student",
        "dmd2+imagine-flash",
    )
    scheduler = json.loads((student / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "NoiseCorrectedDDIMScheduler" and scheduler["noise_correction"] is True
    result = sample_from_folder(student, 2, 10, seed=0)
    assert result.images.shape == (10, 1, 8, 8) and result.network_passes == 2 and np.isfinite(result.images).all()


def test_ablation_dry_run_checks_every_variant(tiny_teacher, tmp_path, capsys):
    from jobs.ablate import main
    from orchestrator.config import AblationConfig
    from orchestrator.config_loading import load_config

    variants = load_config(AblationConfig, CONFIGS / "ablation_imagine_flash.yaml").variants

    common = [
        "--config",
        str(CONFIGS / "imagine_flash.yaml"),
        "--output",
        str(tmp_path / "ablation"),
        "--set",
        f"teacher={tiny_teacher / 'teacher'}",
        "--set",
        f"data={tiny_teacher / 'data'}",
    ]
    assert main([*common, "--dry-run"]) is None
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in variants) and "dry run" in out
    assert not Path(tmp_path / "ablation").exists()  # nothing started, nothing written
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match="student.sampler"):  # a contradiction in one variant stops them all
        main([*common, "--set", "student.timesteps=[999]", "--dry-run"])
