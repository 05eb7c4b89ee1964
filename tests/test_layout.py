"""The package's layout: a folder per part, arrows only downward (issue 14).

Checked on the source (ast) and by importing in a fresh interpreter: the
parts without Flask stay so, no module is over 450 lines, and every folder
says what lives there and what it may import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stat_service"
MAX_LINES = 450

# What each part may import of the package (besides itself). The root
# modules config.py and errors.py import nothing of it.
ALLOWED = {
    "config": set(),
    "errors": set(),
    "rules": set(),
    "ops": set(),
    "storage": {"config", "ops"},
    "local": {"config"},
    "bulk": {"config", "errors", "rules", "storage"},
    "serving": {"config", "errors", "ops"},
    "http": {"config", "errors", "local", "ops", "rules", "storage"},
}
WITHOUT_FLASK = ("config", "errors", "rules", "ops", "storage", "local", "bulk")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(path: Path) -> str:
    """``http`` for stat_service/http/views.py, ``config`` for config.py."""
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def imported(path: Path, *, everything: bool = False) -> set[str]:
    """Absolute names of the stat_service modules ``path`` imports (of every
    module with ``everything``), anywhere in it (function bodies included)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = list(rel[:-1])  # a module's package; __init__'s is its own folder
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    if everything:
        return names
    return {n for n in names if n == "stat_service" or n.startswith("stat_service.")}


def parts_imported(path: Path) -> set[str]:
    """The parts (first name under stat_service) that ``path`` imports."""
    return {name.split(".")[1] for name in imported(path) if "." in name}


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository's root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_the_parts_without_flask_import_neither_flask_nor_werkzeug():
    code = f"""
import importlib, json, pkgutil, sys
names = []
for part in {WITHOUT_FLASK!r}:
    module = importlib.import_module("stat_service." + part)
    names.append(module.__name__)
    if hasattr(module, "__path__"):
        found = pkgutil.walk_packages(module.__path__, module.__name__ + ".")
        names += [m.name for m in found]
for name in names:
    importlib.import_module(name)
web = sorted(m for m in sys.modules if m.split(".")[0] in ("flask", "werkzeug"))
print(json.dumps({{"imported": names, "web": web}}))
"""
    out = run_python(code)
    result = json.loads(out.stdout)
    assert "stat_service.bulk.cli" in result["imported"]
    assert "stat_service.storage.store" in result["imported"]
    assert result["web"] == [], result["web"][:5]


def test_the_package_exports_the_app_lazily():
    code = """
import sys
import stat_service
assert "flask" not in sys.modules, "import stat_service imported Flask"
from stat_service import ConfigError, StatStore, check_config, create_app
from stat_service.__main__ import main
assert "flask" in sys.modules
print(create_app.__module__, check_config.__module__, ConfigError.__module__,
      StatStore.__module__, main.__module__)
"""
    out = run_python(code)
    assert out.stdout.split() == [
        "stat_service.http.app",
        "stat_service.http.app",
        "stat_service.config",
        "stat_service.storage.store",
        "stat_service.bulk.cli",
    ]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_450_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def test_every_folder_has_an_init_with_a_docstring():
    folders = {p.parent for p in modules()} | {
        d for d in PACKAGE.rglob("*") if d.is_dir() and "__pycache__" not in d.parts
    }
    for folder in sorted(folders):
        if folder != PACKAGE and not any(folder.glob("*.py")):
            continue  # a data folder (storage/lua), not a package
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder.relative_to(ROOT)} has no __init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and docstring.strip(), (
            f"{init.relative_to(ROOT)}: no docstring"
        )


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if part_of(p) in ALLOWED],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_imports_point_only_downward(path):
    part = part_of(path)
    wrong = parts_imported(path) - ALLOWED[part] - {part}
    assert not wrong, f"{path.relative_to(ROOT)} ({part}/) imports {sorted(wrong)}"
    if part in WITHOUT_FLASK:
        web = {
            name
            for name in imported(path, everything=True)
            if name.split(".")[0] in ("flask", "werkzeug")
        }
        assert not web, f"{path.relative_to(ROOT)} ({part}/) imports {sorted(web)}"


@pytest.mark.parametrize("part", ["rules", "storage", "ops", "bulk"])
def test_no_part_below_imports_http_or_serving(part):
    for path in (PACKAGE / part).rglob("*.py"):
        wrong = {
            name
            for name in imported(path)
            if name.startswith(("stat_service.http", "stat_service.serving"))
        }
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_checks_see_an_arrow_upward():
    """The scan itself: relative imports at each depth resolve as Python's do."""
    views = PACKAGE / "http" / "views.py"
    assert {"stat_service.errors", "stat_service.http.errors"} <= imported(views)
    assert {"errors", "rules", "storage", "http"} <= parts_imported(views)
