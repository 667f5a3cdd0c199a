"""Every config of the jobs, as typed dataclasses: the one place a setting is defined (this package).

Each field has a default and a docstring (docs/configuration.md is generated from them); choices
are `Literal` types, which the YAML loader checks; `check` validates ranges and fields that depend
on each other, with errors that name the field, the value and the fix. Importing this module
imports neither torch nor Ray: a config can be built, checked and printed anywhere.
"""

from orchestrator.config.common import OptimizerConfig, ScheduleConfig, ShardingConfig, TrackingConfig, UNetConfig
from orchestrator.config.distill import (
    DistillConfig,
    Dmd2Config,
    FaultToleranceConfig,
    ImagineFlashConfig,
    RoleConfig,
    RolesConfig,
    StudentConfig,
)
from orchestrator.config.suites import AblationConfig, AblationVariant, BenchmarkConfig, BenchmarkStudent, TeacherRow
from orchestrator.config.teacher import TeacherTrainingConfig

__all__ = [
    "AblationConfig",
    "AblationVariant",
    "BenchmarkConfig",
    "BenchmarkStudent",
    "DistillConfig",
    "Dmd2Config",
    "FaultToleranceConfig",
    "ImagineFlashConfig",
    "OptimizerConfig",
    "RoleConfig",
    "RolesConfig",
    "ScheduleConfig",
    "ShardingConfig",
    "StudentConfig",
    "TeacherRow",
    "TeacherTrainingConfig",
    "TrackingConfig",
    "UNetConfig",
]
