"""Every config mistake is one line naming the field, the value and the fix, before any actor starts.

Each case runs `jobs.distill --dry-run` on the tiny config plus one or two overrides. The table in
README.md ("Config errors") lists the same mistakes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_helpers import CONFIGS

REPO = Path(__file__).parents[1]

# (overrides, what the one-line message must contain)
BAD_CONFIGS = [
    (["student.timesteps=[499,999]"], "student.timesteps: [499, 999] must be strictly decreasing"),
    (["student.timesteps=[]"], "student.timesteps: needs at least one timestep"),
    (["student.timesteps=[1000]"], "must be below the teacher's num_train_timesteps=1000"),
    (["student.timesteps=[999,-1]"], "negative timestep"),
    (["dmd2.critic_updates_per_generator_update=0"], "critic_updates_per_generator_update: 0 must be at least 1"),
    (["dmd2.dm_t_min=0.9", "dmd2.dm_t_max=0.1"], "dmd2.dm_t_min: need 0 <= dm_t_min < dm_t_max <= 1"),
    (["dmd2.gan_generator_weight=-1"], "dmd2.gan_generator_weight: -1.0 must not be negative"),
    (["dmd2.dm_weight=0", "dmd2.gan_generator_weight=0"], "the generator would learn nothing"),
    (["student.inputs=noised"], "student.inputs: 'noised' is not one of backward_simulated, forward_noised"),
    (["student.sampler=euler"], "student.sampler: 'euler' is not one of lcm, ddim, noise_corrected_ddim"),
    (
        ["student.timesteps=[999]", "student.sampler=noise_corrected_ddim"],
        "student.sampler: noise_corrected_ddim changes only how the student moves",
    ),
    (
        ["student.step_weights=[1]"],
        "student.step_weights: [1.0] needs one non-negative weight per timestep of [999, 499]",
    ),
    (["student.step_weights=[1,-1]"], "student.step_weights: [1.0, -1.0] needs one non-negative weight"),
    (
        ["dmd2.last_critic_update=after"],
        "dmd2.last_critic_update: 'after' is not one of before_generator, with_generator",
    ),
    (["dmd2.dm_timesteps=partial"], "dmd2.dm_timesteps: 'partial' is not one of full, below_input"),
    (["student.ema_decay=1"], "student.ema_decay: 1.0 must be 0 (no average) or in (0, 1)"),
    (["imagine_flash.gamma_scale=0"], "imagine_flash.gamma_scale: 0.0 must be positive"),
    (["imagine_flash.srl_teacher_steps=0"], "imagine_flash.srl_teacher_steps: 0 must be 1 to 50"),
    (["imagine_flash.srl_weight=-1"], "imagine_flash.srl_weight: -1.0 must not be negative"),
    (
        ["student.inputs=forward_noised", "data=/nonexistent/data"],
        "data: data set folder /nonexistent/data does not exist",
    ),
    (["roles.critic.optimizer.learning_rate=0"], "roles.critic.optimizer.learning_rate: 0.0 must be positive"),
    (
        ["roles.generator.optimizer.learning_rate=fast"],
        "roles.generator.optimizer.learning_rate: expected float, got 'fast'",
    ),
    (
        ["roles.generator.optimizer.grad_clip=-1"],
        "roles.generator.optimizer.grad_clip: -1.0 must be 0 (off) or positive",
    ),
    (["roles.critic.rank=2"], "roles.critic.rank: unknown field"),
    (["roles.critic.ranks=0"], "roles.critic.ranks: 0 must be at least 1"),
    (["roles.critic.ranks=3"], "batch_size: 32 must be divisible by roles.critic.ranks=3"),
    (["roles.critic.sharding.zero_stage=4"], "roles.critic.sharding.zero_stage: 4 is not one of 0, 1, 2, 3"),
    (
        ["roles.teacher.sharding.zero_stage=2"],
        "roles.teacher.sharding.zero_stage: 2: the frozen teacher has no optimizer state or gradients to shard",
    ),
    (["roles.critic.gpus_per_rank=1"], "roles.critic: no node offers"),
    (["roles.teacher.node_resource=inference_gpu"], "roles.teacher: no node offers"),
    (["batch_size=abc"], "batch_size: expected int, got 'abc'"),
    (["generator_steps=0"], "generator_steps: 0 must be at least 1"),
    (["eval_num=5"], "eval_num: 5 must be at least 10"),
    (["checkpoint_keep=0"], "checkpoint_keep: 0 must be at least 1"),
    (["resume=sometimes"], "resume: 'sometimes' must be auto, never, or a checkpoint folder"),
    (
        ["resume=/nonexistent/checkpoints/step-000100"],
        "resume: checkpoint /nonexistent/checkpoints/step-000100 has no manifest.json",
    ),
    (["fault_tolerance.max_restarts=-1"], "fault_tolerance.max_restarts: -1 must be 0"),
    (["fault_tolerance.cycle_timeout_s=0"], "fault_tolerance.cycle_timeout_s: 0.0 must be positive"),
    (["fault_tolerance.max_nonfinite_in_a_row=0"], "fault_tolerance.max_nonfinite_in_a_row: 0 must be at least 1"),
    (
        ["teacher=/nonexistent/teacher", "teacher_recipe=null"],
        "teacher: model folder /nonexistent/teacher does not exist",
    ),
    (["data=/nonexistent/data"], "data: data set folder /nonexistent/data does not exist"),
    (  # a teacher still to be made does not excuse a mistyped data path: it is never filled with the digits
        ["teacher=/nonexistent/teacher", "data=/nonexistent/really/not/here"],
        "data: data set folder /nonexistent/really/not/here does not exist (a teacher recipe's data): create it with "
        "`python -m jobs.prepare_data --out /nonexistent/really/not/here`",
    ),
    (["fault_tolerance.stop_timeout_s=0"], "fault_tolerance.stop_timeout_s: 0.0 must be positive"),
    (["tracking=sqlite"], "tracking: expected a mapping of fields"),
    (["generator_steps"], "write overrides as field.path=value"),
    (
        ["generator_init=/nonexistent/student"],
        "generator_init: /nonexistent/student does not exist; point at a DIR/student folder",
    ),
    (["roles.critic.cpus_per_rank=-1"], "roles.critic.cpus_per_rank: -1.0 must not be negative"),
    (["roles.generator.node_resource=''"], "roles.generator.node_resource: is empty"),
    (["roles.critic.optimizer.betas=[0.9]"], "roles.critic.optimizer.betas: [0.9] must be two numbers in [0, 1)"),
    (["roles.critic.optimizer.weight_decay=-0.1"], "roles.critic.optimizer.weight_decay: -0.1 must not be negative"),
    (["dmd2.guidance_scale=-2"], "dmd2.guidance_scale: -2.0 must not be negative"),
    (["seed=-1"], "seed: -1 must not be negative"),
    (["tracking.experiment=' '"], "tracking.experiment: is empty"),
    (["tracking.tracking_uri=bogus://host"], "tracking.tracking_uri: scheme 'bogus' is not one MLflow stores runs in"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_is_one_line_error_naming_the_field(tiny_teacher, overrides, message, capsys):
    from jobs.cli import run_main
    from jobs.distill import main

    sets = [arg for override in overrides for arg in ("--set", override)]
    argv = [
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"teacher={tiny_teacher / 'teacher'}",
        "--set",
        f"data={tiny_teacher / 'data'}",
        *sets,
        "--dry-run",
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert message in error, error


@pytest.mark.parametrize(
    "field,folder,message",
    [
        ("teacher", "data", "teacher: "),
        ("generator_init", "teacher", "generator_init: "),  # a teacher is not a student to start from
    ],
)
def test_a_folder_of_the_wrong_kind_is_refused(tiny_teacher, field, folder, message, capsys):
    from jobs.cli import run_main
    from jobs.distill import main

    argv = [
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"teacher={tiny_teacher / 'teacher'}",
        "--set",
        f"data={tiny_teacher / 'data'}",
        "--set",
        f"{field}={tiny_teacher / folder}",
        "--dry-run",
    ]
    with pytest.raises(SystemExit):
        run_main(main, argv)
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_resume_never_refuses_an_output_with_checkpoints(tiny_teacher, tmp_path, capsys):
    from jobs.cli import run_main
    from jobs.distill import main

    (tmp_path / "run" / "checkpoints" / "step-000002").mkdir(parents=True)
    argv = [
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"teacher={tiny_teacher / 'teacher'}",
        "--set",
        f"data={tiny_teacher / 'data'}",
        "--output",
        str(tmp_path / "run"),
        "--set",
        "resume=never",
        "--dry-run",
    ]
    with pytest.raises(SystemExit):
        run_main(main, argv)
    assert "resume: never, but" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()  # nothing lost


def distill_command_line(tiny_teacher: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m jobs.distill` on the tiny config with the session's teacher, as a user runs it, without
    RAY_ADDRESS: a run that gets past its checks starts a local Ray cluster."""
    sets = [arg for override in (f"teacher={tiny_teacher / 'teacher'}", *overrides) for arg in ("--set", override)]
    return subprocess.run(
        [sys.executable, "-m", "jobs.distill", "--config", str(CONFIGS / "tiny.yaml"), *sets],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"},
    )


def test_a_bad_config_prints_no_traceback_from_the_command_line(tiny_teacher):
    done = distill_command_line(tiny_teacher, f"data={tiny_teacher / 'data'}", "student.timesteps=[499,999]")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: student.timesteps"), done.stderr


def test_a_real_run_with_missing_data_stops_before_it_starts_a_local_ray_cluster(tiny_teacher):
    """The run checks its inputs before the seconds a local cluster takes to start."""
    done = distill_command_line(tiny_teacher, "data=/nonexistent/data", "student.inputs=forward_noised")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: data: data set folder /nonexistent/data"), done.stderr
    assert "Ray instance" not in done.stdout + done.stderr, done.stderr


def test_float_fields_accept_yaml_exponents_without_a_dot():
    """YAML 1.1 reads 2e-4 as a string; a float field takes it as the number the user meant."""
    from orchestrator.config import DistillConfig
    from orchestrator.config_loading import load_config

    config = load_config(DistillConfig, CONFIGS / "tiny.yaml", ["roles.critic.optimizer.learning_rate=2e-4"])
    assert config.roles.critic.optimizer.learning_rate == pytest.approx(2e-4)


def test_credentials_in_the_tracking_uri_never_reach_params():
    from orchestrator.config import DistillConfig
    from orchestrator.config_loading import load_config, to_dict
    from orchestrator.tracking import run_params

    secret = "https://alice:s3cret@mlflow.example.com"
    config = load_config(DistillConfig, CONFIGS / "tiny.yaml", [f"tracking.tracking_uri={secret}"])
    params = run_params(to_dict(config), secret)
    assert not any("s3cret" in value for value in params.values())
    assert params["tracking.tracking_uri"] == "https://***@mlflow.example.com"


def test_resuming_with_other_rank_counts_is_refused(tiny_teacher, tmp_path, capsys):
    """Optimizer state is per rank: a checkpoint of a 2-rank critic cannot feed a 1-rank one."""
    from jobs.cli import run_main
    from jobs.distill import main

    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    (checkpoint / "critic").mkdir(parents=True)
    for rank in (0, 1):
        (checkpoint / "critic" / f"optimizer-rank{rank}.json").write_text("{}")
    (checkpoint / "manifest.json").write_text(
        '{"files": {"critic/optimizer-rank0.json": 2, "critic/optimizer-rank1.json": 2}}'
    )
    argv = [
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"teacher={tiny_teacher / 'teacher'}",
        "--set",
        f"data={tiny_teacher / 'data'}",
        "--output",
        str(tmp_path / "run"),
        "--dry-run",
    ]
    with pytest.raises(SystemExit):
        run_main(main, argv)
    assert "roles.critic.ranks: 1, but checkpoint" in capsys.readouterr().err


def test_a_jobs_tracking_uri_does_not_decide_the_next_jobs_store(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a teacher made on first use then sent the
    distillation's run to the teacher's store, whatever tracking.tracking_uri said (found in a real run)."""
    import mlflow

    from orchestrator.tracking import tracking_uri, use_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = f"sqlite:///{tmp_path / 'teacher.db'}", f"sqlite:///{tmp_path / 'distill.db'}"
    assert use_tracking_uri(first) == first and mlflow.get_tracking_uri() == first
    assert tracking_uri(second) == second and use_tracking_uri(second) == second and mlflow.get_tracking_uri() == second
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)  # the user's own environment still wins
    assert use_tracking_uri(second) == first
