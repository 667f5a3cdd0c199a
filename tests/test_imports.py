"""The layout's rules, checked on the source: imports go down the floors (jobs -> orchestrator -> workers),
never in a circle, and importing the config pulls in neither torch nor Ray."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"jobs": 2, "orchestrator": 1, "workers": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function (a lazy import is still a dependency)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            modules |= {node.module} | set(names)
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
    return {m for m in modules if m.split(".")[0] in FLOORS}


def graph() -> dict[str, set[str]]:
    files = [p for floor in FLOORS for p in (REPO / floor).rglob("*.py")]
    known = {module_name(p) for p in files}
    # `from workers.models import folders` names a module; `from workers.models.folders import X` names X in one.
    return {
        module_name(p): {m if m in known else m.rsplit(".", 1)[0] for m in project_imports(p)}
        & known - {module_name(p)}
        for p in files
    }


def test_no_import_goes_up_a_floor():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if FLOORS[target.split(".")[0]] > FLOORS[module.split(".")[0]]
    )
    assert upward == [], "imports must go jobs -> orchestrator -> workers:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges, cycles = graph(), []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(
                    " -> ".join(path[path.index(target) :] + [module, target])
                    if target in path
                    else f"{module} -> {target}"
                )
            elif target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_config_imports_neither_torch_nor_ray():
    code = (
        "import sys, orchestrator.config; print(sorted(m for m in ('torch', 'ray', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
