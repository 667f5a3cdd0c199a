"""Write docs/configuration.md from the config dataclasses: every key, its type, default, allowed values, meaning.

    python scripts/config_reference.py           # rewrite docs/configuration.md
    python scripts/config_reference.py --check   # exit 1 when it is stale (the test suite runs this check)

The meanings are the fields' docstrings in orchestrator/config/, read from its source.
"""

import argparse
import ast
import dataclasses
import re
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator import config as config_module  # noqa: E402

OUTPUT = REPO / "docs" / "configuration.md"
ROOTS = [
    ("DistillConfig", "a distillation: `python -m jobs.distill --config FILE`, e.g. jobs/configs/digits.yaml"),
    ("TeacherTrainingConfig", "teacher training: `python -m jobs.train_teacher --config FILE`"),
    ("BenchmarkConfig", "a benchmark: `python -m jobs.benchmark NAME`, e.g. jobs/configs/fashion.yaml"),
    (
        "AblationConfig",
        "an ablation suite: `python -m jobs.ablate --suite NAME`, e.g. jobs/configs/ablation_fashion.yaml",
    ),
]


def field_docs() -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} from the string expression after each field in the source."""
    docs: dict[str, dict[str, str]] = {}
    nodes = [
        node
        for file in sorted(Path(config_module.__file__).parent.glob("*.py"))
        for node in ast.parse(file.read_text()).body
    ]
    for node in nodes:
        if not isinstance(node, ast.ClassDef):
            continue
        fields, body = {}, node.body
        for statement, following in zip(body, body[1:] + [None]):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                doc = (
                    following.value.value
                    if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    else ""
                )
                fields[statement.target.id] = " ".join(str(doc).split())
        docs[node.name] = fields
    return docs


def type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(hint))
    text = str(hint) if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))
    text = (
        text.replace("typing.", "")
        .replace("pathlib.", "")
        .replace("orchestrator.config.", "")
        .replace("NoneType", "None")
    )
    text = re.sub(r"orchestrator\.config\.\w+\.", "", text)
    return text.replace(" | ", " or ")


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return ""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return "`null`" if value is None else f"`{value}`"


def rows(cls, prefix: str, docs: dict[str, dict[str, str]]) -> list[str]:
    hints = typing.get_type_hints(cls, include_extras=False)
    lines = []
    for field in dataclasses.fields(cls):
        hint, key = hints[field.name], f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hint):
            lines += rows(hint, f"{key}.", docs)
            continue
        value_type = typing.get_args(hint)[1] if typing.get_origin(hint) is dict else None
        doc = docs.get(cls.__name__, {}).get(field.name, "")
        if value_type is not None and dataclasses.is_dataclass(value_type):
            lines.append(f"| `{key}` | mapping of name to {value_type.__name__} | {default_text(field)} | {doc} |")
            lines += rows(value_type, f"{key}.NAME.", docs)
            continue
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
        if item is not None and dataclasses.is_dataclass(item):
            lines.append(f"| `{key}` | list of {item.__name__} | {default_text(field)} | {doc} |")
            lines += rows(item, f"{key}[].", docs)
            continue
        lines.append(f"| `{key}` | {type_name(hint)} | {default_text(field)} | {doc} |")
    return lines


def render() -> str:
    docs = field_docs()
    out = [
        "# Configuration reference",
        "",
        "Every key of every config, generated from the dataclasses in `orchestrator/config/` by",
        "`python scripts/config_reference.py` (a test fails when this page is stale). Configs are YAML;",
        "any key can be overridden on the command line with `--set key.path=value` (the value is read as",
        "YAML). Unknown keys, wrong types and values out of range stop a job before it starts, with an",
        "error that names the key, the value and the fix.",
        "",
    ]
    for name, what in ROOTS:
        cls = getattr(config_module, name)
        out += [
            f"## {name}",
            "",
            f"{cls.__doc__.strip()} Used by {what}.",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
            *rows(cls, "", docs),
            "",
        ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            sys.exit(f"{OUTPUT.relative_to(REPO)} is stale: run `python scripts/config_reference.py`")
        return
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
