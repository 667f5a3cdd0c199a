"""From a run's config to what each worker is told: DeepSpeed's JSON config and the role setups.

Workers never read the config itself (imports go jobs -> orchestrator -> workers): they get
DeepSpeed's own config dict and small setup dataclasses of their own, built here.
"""

from pathlib import Path

from orchestrator.config import DistillConfig, OptimizerConfig, ShardingConfig


def deepspeed_config(optimizer: OptimizerConfig | None, sharding: ShardingConfig, micro_batch: int) -> dict:
    """DeepSpeed's JSON config for one role: torch's AdamW with a linear warm-up (none for the frozen teacher)."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": sharding.zero_stage},
        "bf16": {"enabled": sharding.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if optimizer is None:
        return config
    config["gradient_clipping"] = optimizer.grad_clip
    # torch_adam: torch.optim.AdamW itself, where DeepSpeed's own Adam would compile an op first.
    config["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": optimizer.learning_rate,
            "betas": list(optimizer.betas),
            "weight_decay": optimizer.weight_decay,
            "torch_adam": True,
        },
    }
    if optimizer.warmup_steps > 0:  # WarmupLR starts at lr 0: only when a warm-up is asked for
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": optimizer.learning_rate,
                "warmup_num_steps": optimizer.warmup_steps,
                "warmup_type": "linear",
            },
        }
    return config


def role_setups(config: DistillConfig, num_train_timesteps: int):
    """What the teacher, critic and generator ranks are told at setup (one setup per role, every rank the same)."""
    from workers.models.conditioning import PROMPT_TABLE
    from workers.models.folders import layout_of
    from workers.models.pipelines import LoraSetup
    from workers.roles.critic import CriticSetup
    from workers.roles.generator import GeneratorSetup
    from workers.roles.teacher import TeacherSetup

    roles, d, srl, student = config.roles, config.dmd2, config.imagine_flash, config.student
    # A text-to-image teacher's labels index the data set's prompts, whose embeddings every role reads from one table.
    prompts = None if layout_of(config.teacher) == "pixels" else str((Path(config.data) / PROMPT_TABLE).resolve())
    teacher_setup = TeacherSetup(
        guidance_scale=d.guidance_scale,
        dm=d.dm_weight > 0,
        srl=srl.srl_weight > 0,
        gamma_scale=srl.gamma_scale,
        gamma_shift=srl.gamma_shift,
        gamma_jitter=srl.gamma_jitter,
        srl_teacher_steps=srl.srl_teacher_steps,
        srl_guidance_scale=srl.srl_guidance_scale,
        prompts=prompts,
        deepspeed=deepspeed_config(None, roles.teacher.sharding, config.batch_size // roles.teacher.ranks),
    )
    critic_batch = config.batch_size // roles.critic.ranks
    critic_setup = CriticSetup(
        critic_batch,
        d.gan_discriminator_weight,
        d.gan_generator_weight,
        deepspeed_config(roles.critic.optimizer, roles.critic.sharding, critic_batch),
        roles.critic.sharding.gradient_checkpointing,
        dm_loss=d.dm_weight > 0,
        prompts=prompts,
    )
    generator_batch = config.batch_size // roles.generator.ranks
    generator_setup = GeneratorSetup(
        timesteps=list(student.timesteps),
        inputs=student.inputs,
        sampler=student.sampler,
        micro_batch=generator_batch,
        dm_t_min=int(d.dm_t_min * num_train_timesteps),
        dm_t_max=min(int(d.dm_t_max * num_train_timesteps), num_train_timesteps - 1),
        dm_below_input=d.dm_timesteps == "below_input",
        dm_weight=d.dm_weight,
        gan_generator_weight=d.gan_generator_weight,
        srl_weight=srl.srl_weight,
        deepspeed=deepspeed_config(roles.generator.optimizer, roles.generator.sharding, generator_batch),
        gradient_checkpointing=roles.generator.sharding.gradient_checkpointing,
        init_from=str(Path(config.generator_init).resolve()) if config.generator_init else None,
        prompts=prompts,
        lora=LoraSetup.of(student.lora_rank, student.lora_alpha),
        ema_decay=student.ema_decay,
    )
    return teacher_setup, critic_setup, generator_setup
