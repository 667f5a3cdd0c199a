"""Benchmarks and ablation suites: many distillations and one table."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.config.common import TrackingConfig
from orchestrator.config_loading import require


@dataclass
class BenchmarkStudent:
    """One student of a benchmark: a distillation of the benchmark's base config with some overrides."""

    title: str = ""
    """Its row in the table, e.g. "DMD2, 1 step"."""
    overrides: list[str] = field(default_factory=list)
    """`field.path=value` overrides of the base distillation config, as `--set` takes them."""


@dataclass
class TeacherRow:
    """A row of the teacher, sampled without training: a sampler and a step count."""

    sampler: Literal["ddim", "dpm_solver"] = "ddim"
    """ddim (deterministic DDIM) or dpm_solver (diffusers' DPMSolverMultistepScheduler, DPM-Solver++ 2M)."""
    steps: int = 50
    """Sampler steps (each a network pass, two with classifier-free guidance)."""


@dataclass
class BenchmarkConfig:
    """A benchmark: real data, a teacher trained on it, students distilled from it, and one table of them all."""

    source: Literal["fashion-mnist"] = "fashion-mnist"
    """The data set, as `python -m jobs.prepare_data --source` names it."""
    data: Path = Path("runs/data/fashion-mnist")
    """Its prepared folder, with train/ (teacher, GAN, yardstick) and test/ (what FD compares with)."""
    teacher_recipe: Path = Path("jobs/configs/teacher_fashion.yaml")
    """The teacher-training config; the teacher is trained once and reused while its recipe is unchanged."""
    teacher_overrides: list[str] = field(default_factory=list)
    """Overrides of the teacher recipe."""
    distill_config: Path = Path("jobs/configs/distill_fashion.yaml")
    """The base distillation config every student starts from."""
    distill_overrides: list[str] = field(default_factory=list)
    """Overrides applied to every student."""
    students: dict[str, BenchmarkStudent] = field(default_factory=dict)
    """The students, by folder name under the output folder (student1, student4, if3, ...)."""
    teacher_rows: list[TeacherRow] = field(default_factory=lambda: [TeacherRow("ddim", 50)])
    """How the teacher itself is sampled for the table."""
    eval_num: int = 1000
    """Samples behind every metric of the table (FD also at each of fd_sizes)."""
    fd_sizes: list[int] = field(default_factory=lambda: [5000])
    """Larger sample counts FD is also measured at (FD is biased upwards by small samples)."""
    seed: int = 0
    """The sampling seed of every row."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self, where: str = "") -> None:
        require(len(self.students) >= 1, "students", "is empty; name at least one student, e.g. student1: {title: ...}")
        require(self.eval_num >= 10, "eval_num", f"{self.eval_num} must be at least 10")
        require(
            all(n >= self.eval_num for n in self.fd_sizes),
            "fd_sizes",
            f"{self.fd_sizes} must each be at least eval_num={self.eval_num}",
        )
        for index, row in enumerate(self.teacher_rows):
            require(row.steps >= 1, f"teacher_rows[{index}].steps", f"{row.steps} must be at least 1")


@dataclass
class AblationVariant:
    """One row of an ablation: the suite's config with some overrides, and what the paper says of it."""

    title: str = ""
    """The row's name in the table."""
    overrides: list[str] = field(default_factory=list)
    """`field.path=value` overrides of the suite's distillation config (after its base's)."""
    base: str | None = None
    """The variant this one changes one thing of: its overrides apply first, and this row's FD is read against its."""
    expected: Literal["worse", "better", "same"] | None = None
    """The direction the paper reports for this variant's FD against its base's."""
    paper: str = ""
    """The paper's numbers behind `expected`, for the table's sentence."""


@dataclass
class AblationConfig:
    """An ablation suite: variants of one method, each distilled with several seeds, in one table."""

    distill_config: Path = Path("jobs/configs/imagine_flash.yaml")
    """The distillation config every variant starts from."""
    overrides: list[str] = field(default_factory=list)
    """Overrides applied to every variant (e.g. shorter runs than a benchmark's)."""
    variants: dict[str, AblationVariant] = field(default_factory=dict)
    """The variants, by folder name under the output folder."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; a row is the mean and spread over them."""
    teacher_steps: list[int] = field(default_factory=lambda: [50])
    """DDIM step counts the teacher is sampled at for comparison."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self, where: str = "") -> None:
        require(len(self.variants) >= 1, "variants", "is empty; name at least one variant, e.g. full: {title: ...}")
        require(len(self.seeds) >= 1, "seeds", "is empty; give at least one training seed, e.g. [0]")
        for name, variant in self.variants.items():
            require(
                variant.base is None or variant.base in self.variants,
                f"variants.{name}.base",
                f"{variant.base!r} is not a variant of this suite ({', '.join(self.variants)})",
            )
            require(
                variant.base != name, f"variants.{name}.base", "names the variant itself; name the variant it changes"
            )
