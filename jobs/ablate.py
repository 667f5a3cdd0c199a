"""An ablation suite: each variant of a method distilled with every training seed, one table of mean and spread.

    python -m jobs.ablate [--suite imagine_flash] --output runs/ablation [--set field=value ...] [--dry-run] [--fresh]
    python -m jobs.ablate --suite fashion --output runs/fashion-ablation

--suite names jobs/configs/ablation_<suite>.yaml (imagine_flash: Imagine Flash on the digits;
fashion: DMD2 and Imagine Flash on Fashion-MNIST, two seeds) or is the path of such a file.
--set overrides a field of every variant's distillation config. Finished runs are kept: rerunning
the same command continues the suite (--fresh starts it over). OUTPUT/table.md (also in MLflow)
holds the rows and a sentence per variant on whether the paper's direction holds here.
"""

import argparse
import shutil
from pathlib import Path

from jobs.cli import add_overrides, config_file, run_main
from orchestrator.ablation import run_ablation, run_configs, variant_overrides
from orchestrator.config import AblationConfig
from orchestrator.config_loading import load_config


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(prog="python -m jobs.ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="imagine_flash", help="imagine_flash, fashion, or an ablation YAML")
    parser.add_argument("--config", type=Path, default=None, help="replace the suite's distillation config")
    parser.add_argument("--output", type=Path, default=Path("runs/ablation"))
    add_overrides(parser, "override a distillation field in every variant")
    parser.add_argument("--dry-run", action="store_true", help="check every variant's config and inputs, start nothing")
    parser.add_argument("--fresh", action="store_true", help="redo runs whose output exists")
    args = parser.parse_args(argv)
    suite = load_config(
        AblationConfig,
        config_file(args.suite, prefix="ablation_"),
        [f"distill_config={args.config}"] if args.config else [],
    )
    output = args.output.resolve()
    configs = run_configs(suite, output, args.overrides)
    from orchestrator.placement import local_nodes
    from orchestrator.preflight import preflight

    for config in configs.values():
        preflight(config, local_nodes(), may_grow=True)
    if args.dry_run:
        for name in suite.variants:
            print(
                f"{name}: {' '.join(variant_overrides(suite, name)) or '(the config as given)'} "
                f"x seeds {suite.seeds} -> {output / name}"
            )
        print("# every variant's config and inputs OK (dry run: nothing started)")
        return None
    if args.fresh:
        shutil.rmtree(output, ignore_errors=True)
    return run_ablation(suite, configs, output)


if __name__ == "__main__":
    run_main(main)
