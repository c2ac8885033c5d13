"""The package's imports point one way: no cycle among ``clipserve`` modules, and nothing outside
``clipserve/api/`` imports ``clipserve.api`` (datasets → plan → executors → data plane → service →
api / commands).

Every import statement of every module counts, wherever it sits (module level, inside a function,
under ``if TYPE_CHECKING:``), read from the source with ``ast``, so a lazy import cannot hide a
cycle. Importing ``a.b.c`` also imports the packages ``a`` and ``a.b`` (their ``__init__``), as
Python does.

The REST control plane must not import torch: its import is checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "clipserve"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The ``clipserve`` modules ``path`` imports (resolved against ``known``), parents included."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in known and candidate != name:
                    found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of module-to-module imports, as a path that ends where it starts, or None.

    Package ``__init__`` edges to their own submodules are not cycles in practice only when the
    submodule does not import the package back; every edge counts here except a package's
    ``__init__`` importing its own children (the usual re-export), which is what Python expects.
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if child.startswith(node + "."):  # a package re-exporting its own submodule
                continue
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = import_graph()
    assert "clipserve.plan" in graph["clipserve.executors.pool"]
    assert "clipserve.executors" in graph["clipserve.executors.pool"]  # the parent package counts too
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_only_the_api_imports_the_api() -> None:
    offenders = {
        name: sorted(target for target in targets if target == "clipserve.api" or target.startswith("clipserve.api."))
        for name, targets in import_graph().items()
        if not (name == "clipserve.api" or name.startswith("clipserve.api.")) and name != "clipserve.commands.start"
    }
    offenders = {name: targets for name, targets in offenders.items() if targets}
    assert offenders == {}


def test_the_rest_app_does_not_import_torch() -> None:
    """Nor DALI: choosing the backend asks the CUDA driver through ctypes, and DALI (if it must be
    asked) in a short-lived process (before: ~670 MB RSS)."""
    code = (
        "import sys\n"
        "from clipserve.api.app import create_app\n"
        "import clipserve.service, clipserve.commands.start\n"
        "from types import SimpleNamespace\n"
        "from clipserve.executors.backend import dali_device\n"
        "from clipserve.service import resolve_backend\n"
        "videos = [SimpleNamespace(codec='h264'), SimpleNamespace(codec='vp9')]\n"
        "resolve_backend('auto', videos); dali_device()  # what the service asks at start\n"
        "heavy = sorted(m for m in ('torch', 'nvidia.dali', 'torchvision', 'cv2') if m in sys.modules)\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


BATCH_FIELDS = {"clips", "video_index", "label", "clip_start_seconds", "is_padding"}


def test_one_batch_class() -> None:
    """``clipserve.batch.Batch`` is the only class anywhere in the repository (product, trainer,
    tests, benchmarks) that declares a batch's fields."""
    holders = []
    for folder in ("clipserve", "trainer", "tests", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    declared = {item.target.id for item in node.body
                                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
                    if BATCH_FIELDS <= declared:
                        holders.append(f"{path.relative_to(REPO_ROOT)}:{node.name}")
    assert holders == ["clipserve/batch.py:Batch"]
