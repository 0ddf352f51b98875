"""The house rules of docs/architecture.md, read off the code's own imports: no circles, imports
only downward through the pipeline's rooms, no Click below cli/, configuration without torch,
and rooms small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lh_convert"
# Each room may import only the rooms after it in this order (and itself).
ORDER = ("cli", "demo", "doctor", "plan", "bench", "evaluate", "export", "train", "convert", "util")
# Exceptions to ORDER's "anything later": none; kept as a table so a new one is a visible choice.
MAX_LINES = 500
MAX_LOOP_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The lh_convert modules a file imports (at any depth of the file: lazy imports count)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t.startswith("lh_convert") and _exists(t)}
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:]) if "." in module else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or \
        (PACKAGE / relative / "__init__.py").is_file()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {_module_name(path): _imports(path) - {_module_name(path)}
         for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_itself_back_through_a_circle() -> None:
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(target):] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


def test_rooms_import_only_downward() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        room = _room(module)
        if room not in ORDER:
            continue
        for target in targets:
            other = _room(target)
            if other in ORDER and other != room and ORDER.index(other) < ORDER.index(room):
                wrong.append(f"{module} -> {target}")
            if other == "__init__" and target != "lh_convert":
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
    assert all(_room(module) in (*ORDER, "__init__") for module in GRAPH), sorted(GRAPH)


def test_click_lives_only_in_the_cli() -> None:
    users = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
             if "import click" in path.read_text(encoding="utf-8") and "cli" not in path.parts]
    assert not users


def test_configuration_imports_no_torch() -> None:
    code = ("import sys\nimport lh_convert.train.recipes as r\nr.load_recipe('smollm2-135m-64k')\n"
            "import lh_convert.convert.settings\n"
            "heavy = [m for m in ('torch', 'transformers', 'triton') if m in sys.modules]\n"
            "print(heavy)\nraise SystemExit(1 if heavy else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_rooms_are_small_enough_to_read(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_training_loop_reads_a_function_at_a_time() -> None:
    for path in (PACKAGE / "train" / "trainer.py", PACKAGE / "train" / "stages.py",
                 PACKAGE / "train" / "parallelize.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_LOOP_FUNCTION_LINES, f"{path.name}:{node.name} {length} lines"
