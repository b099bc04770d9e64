"""Imports inside functions are for optional dependencies only (the rest stand at the top of
their module, where the import-linter contracts in pyproject.toml see them)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "relayrl_gym"

#: Dependencies an install may lack (extras, platform or Python-version modules).
OPTIONAL = {"zmq", "sqlalchemy", "psycopg", "stable_baselines3", "pettingzoo", "torch",
            "onnxruntime", "onnx", "onnxscript", "pandas", "tomllib", "tomli", "fcntl", "ray",
            "nats", "minari", "cloudpickle", "matplotlib",
            "tensorboard"}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*parts).with_suffix(".py"),
                      PACKAGE.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not under TYPE_CHECKING, not in functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.Import):
                found |= {alias.name for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                found.add(sub.module)
    return found


@functools.cache
def _needs_optional(name: str) -> bool:
    """Whether importing ``name`` imports an optional dependency (directly or through the
    package's own modules)."""
    if name.split(".")[0] in OPTIONAL:
        return True
    if not name.startswith("relayrl_gym."):
        return False
    path = _module_file(name)
    if path is None:
        return False
    return any(_needs_optional(dep) for dep in _top_level_imports(path) if dep != name)


def _function_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    found += [(sub.lineno, alias.name) for alias in sub.names]
                elif isinstance(sub, ast.ImportFrom) and sub.module:
                    found.append((sub.lineno, sub.module))
    return found


def test_function_local_imports_are_for_optional_dependencies_only():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 for line, module in _function_imports(path) if not _needs_optional(module)]
    assert not offenders, "move these imports to the top of their module:\n" + "\n".join(
        offenders)


def test_the_check_sees_what_it_checks():
    # The lazy import of the SB3 front end counts as optional (it imports stable_baselines3),
    # and the package's own core modules do not.
    assert _needs_optional("relayrl_gym.wrappers.sb3")
    assert not _needs_optional("relayrl_gym.core.episodes")
    assert _function_imports(PACKAGE / "wrap.py")
