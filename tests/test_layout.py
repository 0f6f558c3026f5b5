"""The code's layers: each package imports only those below it, so no two packages import each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> set[str]:
    """The top-level names every module of `package` imports, at any depth in the module."""
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "package, never_imports",
    [
        ("models", {"services", "blueprints", "mobile_redirects"}),
        ("services", {"blueprints", "mobile_redirects"}),
        # The API builds deep links (blueprints -> mobile_redirects), so never the other way round.
        ("mobile_redirects", {"blueprints"}),
    ],
)
def test_a_package_never_imports_the_layers_above_it(package, never_imports):
    assert imported_packages(package) & never_imports == set()
