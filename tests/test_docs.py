"""The documentation site covers what users need and agrees with the code.

`mkdocs build --strict` (scripts/check_docs.sh, run by scripts/test.sh) checks the site builds
with every link, anchor and `:::` reference resolved; these tests check its content: every
error class has a troubleshooting entry (what it means, what to do) and a place in the drawn
tree, the names a new user had to find in the source are documented and exist, the install
page has the virtual-environment step, every install hint names the distribution
(`resumable-sweeps`), never the unrelated `resumable` project on PyPI, and the module map
names every module of the package.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import resumable.errors
from resumable import ResumableSweep
from resumable.mirror import MirrorOptions

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DIST = "resumable-sweeps"


def _error_classes() -> list[type[BaseException]]:
    return sorted(
        (
            obj
            for obj in vars(resumable.errors).values()
            if isinstance(obj, type) and issubclass(obj, resumable.errors.ResumableError)
        ),
        key=lambda cls: cls.__name__,
    )


def _sections(text: str) -> dict[str, str]:
    """`### `Name`` headings of a page -> the text under each, up to the next heading."""
    parts = re.split(r"^#{2,3} ", text, flags=re.M)
    out = {}
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        match = re.fullmatch(r"`(\w+)`", title.strip())
        if match:
            out[match[1]] = body
    return out


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_has_a_troubleshooting_entry(cls: type[BaseException]) -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    sections = _sections(text)
    assert cls.__name__ in sections, f"docs/troubleshooting.md has no '### `{cls.__name__}`'"
    body = sections[cls.__name__]
    assert "**Means**" in body and "**Do**" in body, (
        f"{cls.__name__}: say what it means, what to do"
    )
    tree = text.split("```", 2)[1]  # the drawn error tree, first code block of the page
    node = re.compile(rf"(^|── ){cls.__name__}\b")  # the class's own node, not a mention
    line = next((ln for ln in tree.splitlines() if node.search(ln)), None)
    assert line is not None, f"{cls.__name__} is missing from the error tree"
    for builtin in (TypeError, ValueError, FileExistsError, FileNotFoundError, OSError):
        direct = builtin in cls.__bases__
        if direct:
            assert builtin.__name__ in line, f"{cls.__name__} is also a {builtin.__name__}"


def test_the_tree_names_no_error_that_does_not_exist() -> None:
    tree = (DOCS / "troubleshooting.md").read_text().split("```", 2)[1]
    drawn = set(re.findall(r"\b(\w+Error)\b", tree)) - {
        "TypeError",
        "ValueError",
        "FileExistsError",
        "FileNotFoundError",
        "OSError",
        "StorageError",
    }
    assert drawn <= {cls.__name__ for cls in _error_classes()}


def test_names_a_new_user_had_to_find_are_documented_and_exist() -> None:
    concepts = (DOCS / "concepts.md").read_text()
    for name in ("completed", "completed_items", "result", "is_done", "run", "seed"):
        assert hasattr(ResumableSweep, name), name
        assert f"sweep.{name}" in concepts, f"docs/concepts.md does not document sweep.{name}"
    params = inspect.signature(ResumableSweep.run).parameters
    for param in ("progress", "max_in_flight", "max_failures", "executor"):
        assert param in params
        assert f"`{param}`" in concepts, f"run({param}=...) is undocumented"
    assert "fn(item, seed=sweep.seed(item))" in concepts
    assert "worker_initializer" in concepts
    fields = {f.name: f.default for f in dataclasses.fields(MirrorOptions)}
    for name, default in fields.items():
        assert f"`{name}`" in concepts, f"MirrorOptions.{name} is undocumented"
        assert f"| `{name}` | {default} |" in concepts, f"MirrorOptions.{name}: wrong default"
    timeout = fields["flush_timeout_s"]
    assert f"default {timeout:g} s" in concepts
    assert f"default {timeout:g} s" in (DOCS / "guarantees.md").read_text()


def test_install_page_activates_the_virtual_environment() -> None:
    text = (DOCS / "install.md").read_text()
    assert "python -m venv .venv" in text and ". .venv/bin/activate" in text
    assert f"pip install {DIST}" in text
    quick = (DOCS / "quickstart.md").read_text()
    assert quick.index(". .venv/bin/activate") < quick.index("resumable status")


def test_the_distribution_name_is_used_in_every_install_hint() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; this runs on 3.10)
    assert re.search(rf'^name = "{DIST}"$', pyproject, flags=re.M)
    assert re.search(r'^resumable = "resumable.cli:main"$', pyproject, flags=re.M)  # the command
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "jobs" / "README.md"]
    for folder in ("docs", "resumable", "scripts", "jobs", "tests"):
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.suffix in (".md", ".py", ".sh", ".yaml", ".sbatch")
        ]
    wrong_extra = re.compile(r"(?<![-\w])resumable\[")
    bare = re.compile(r"pip install ['\"]?resumable(?![-\w])")
    for path in files:
        if path == Path(__file__):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            assert not wrong_extra.search(line), f"{where}: install {DIST}[...], not resumable[...]"
            if bare.search(line):  # only where the docs warn about the other project
                assert "unrelated" in line or "uninstall" in line, f"{where}: {line.strip()}"


def test_api_reference_blocks_live_on_one_page() -> None:
    """`::: module` blocks only in docs/reference.md: moving a module means editing one file."""
    for page in DOCS.rglob("*.md"):
        blocks = [ln for ln in page.read_text().splitlines() if ln.startswith(":::")]
        if page.name == "reference.md":
            assert blocks
        else:
            assert not blocks, f"{page.relative_to(ROOT)} has ::: blocks; put them in reference.md"


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def _module_names() -> list[str]:
    package = ROOT / "resumable"
    return sorted({p.stem for p in package.rglob("*.py") if p.stem != "__init__"})


@pytest.mark.parametrize("name", _module_names())
def test_the_module_map_names_every_module(name: str) -> None:
    """docs/structure.md draws the package layer by layer: a module added (or split off) must
    take its place there, or the map stops being one."""
    text = (DOCS / "structure.md").read_text(encoding="utf-8")
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text), f"{name} is not in the map"
