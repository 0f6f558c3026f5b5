"""The code's layers: each package imports only those below it, so no two packages import each other,
and no module is part of a loop of imports."""

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


def app_modules() -> dict[str, Path]:
    """The app's modules and its tools' (the top-level files and packages; not the tests), by the
    name they are imported as."""
    packages = [folder for folder in ROOT.iterdir() if (folder / "__init__.py").is_file()]
    files = [*ROOT.glob("*.py"), *(path for package in packages for path in package.rglob("*.py"))]
    return {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path for path in files}


def import_graph() -> dict[str, set[str]]:
    """Which of the app's modules each one imports, at any depth in it, type-only imports included: a
    reader follows those as much as any other."""
    modules = app_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                # `from package import module` imports that module; `from module import name`, the module.
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    graph[name].update({submodule} if submodule in modules else {node.module} & modules.keys())
    return graph


def a_loop(graph: dict[str, set[str]]) -> list[str]:
    """One loop of imports in `graph`, as the modules along it and the first again; [] if there is none."""
    finished: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in finished:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            if loop := visit(imported):
                return loop
        path.pop()
        finished.add(module)
        return []

    return next((loop for module in sorted(graph) if (loop := visit(module))), [])


def test_no_module_is_part_of_a_loop_of_imports():
    """Each part's settings build on settings_base.py, which config.py composes; the integration's
    host.py names its worker threads by protocol, not by the classes that look it up."""
    assert a_loop(import_graph()) == []
