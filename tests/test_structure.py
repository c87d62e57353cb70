"""Structural rules of the package (issue 15), checked on its source with `ast`.

Only `cli` prints: every other module reports through return values, exceptions and logging.
Library work stays out of the command line and the tools: `cli` does not write checkpoints itself,
and the chaos harness has no checkpoint parsing of its own (it reads through `open_view`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resumable"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _printing_calls(tree: ast.Module) -> list[str]:
    """print(...), pprint(...), and sys.stdout/sys.stderr .write(...) calls."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("print", "pprint"):
            found.append(f"line {node.lineno}: {func.id}(...)")
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in ("write", "writelines")
            and isinstance(func.value, ast.Attribute)
            and func.value.attr in ("stdout", "stderr")
            and isinstance(func.value.value, ast.Name)
            and func.value.value.id == "sys"
        ):
            found.append(f"line {node.lineno}: sys.{func.value.attr}.{func.attr}(...)")
    return found


def _imported_names(tree: ast.Module) -> set[str]:
    """module:name for every `from module import name` (relative modules as written)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names.update(f"{module}:{alias.name}" for alias in node.names)
    return names


def test_the_walk_finds_the_package() -> None:
    assert PACKAGE / "cli.py" in MODULES and len(MODULES) > 30
    assert _printing_calls(_tree(PACKAGE / "cli.py"))  # the one module that does print


@pytest.mark.parametrize(
    "path", [p for p in MODULES if p.name != "cli.py"], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_only_cli_prints(path: Path) -> None:
    assert _printing_calls(_tree(path)) == [], f"{path.relative_to(PACKAGE)} prints"


def test_cli_leaves_checkpoint_writes_to_the_library() -> None:
    imported = _imported_names(_tree(PACKAGE / "cli.py"))
    writers = {f"._checkpoint:{name}" for name in ("CheckpointWriter", "DirLock", "load")}
    assert not imported & writers, "retry-failed belongs to resumable.sweep.retry_failed"


def test_chaos_reads_through_the_views_reader() -> None:
    imported = _imported_names(_tree(PACKAGE / "chaos.py"))
    own_parsing = {
        "._journal:parse_segment",
        "._journal:Record",
        "._manifest:parse_manifest",
        "._checkpoint:load_from",
        "._checkpoint:MAX_MANIFEST_READ",
    }
    assert not imported & own_parsing
    assert ".view:open_view" in imported and ".view:verify" in imported
