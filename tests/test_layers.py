"""The dependency arrows of DESIGN.md: launch.py -> app/ -> core/, launch.py -> viewer/ -> core/.
core/ imports neither gradio nor viser (nor app/ or viewer/); app/ and viewer/ never import each
other. Checked on the source with ``ast``, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "core": {"gradio", "viser", "app", "viewer"},
    "app": {"viewer", "viser"},
    "viewer": {"app", "gradio"},
}


def imported_roots(path: Path, pkg: str) -> set[str]:
    """Top-level package names a module of ``pkg`` imports (relative imports stay inside ``pkg``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(pkg if node.level else (node.module or "").split(".")[0])
    return roots


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_keeps_its_dependency_arrows(package):
    files = modules(package)
    if package == "core":
        assert files, "core/ has no modules?"
    bad = {str(p.relative_to(ROOT)): sorted(imported_roots(p, package) & FORBIDDEN[package]) for p in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package}/ imports what it must not: {bad}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A checker that cannot fail protects nothing: feed it a module that breaks a rule."""
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    import gradio as gr\n    from viewer.server import ViewerServer\n"
                    "from . import grid\n")
    assert imported_roots(fake, "core") == {"gradio", "viewer", "core"}
