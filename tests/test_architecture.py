"""The package's layers (docs/architecture.md): a module imports from its own layer or the layers below, never above.

Every ``import`` of a ``bundle`` module is read from the source (module level and inside functions alike); an import
that climbs a layer fails this test unless it is one of the known exceptions below, each with its reason, which the
architecture page lists as the debts to pay. A new exception is a design decision: add it here and there.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = [  # bottom to top
    {"errors", "outputs", "utils"},
    {"io", "pacs"},
    {"transforms"},
    {"data"},
    {"networks", "losses", "metrics", "optimizers"},
    {"engines", "handlers", "visualize"},
    {"inference"},
    {"evaluation", "curation"},
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

KNOWN: dict[tuple[str, str], str] = {}  # (importing module, imported module): why it stands


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: str, module: str, is_init: bool):
    tree = ast.parse(open(path, encoding="utf-8").read())
    base = module.split(".") if is_init else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                yield ".".join(parent + ([node.module] if node.module else []))
            else:
                yield node.module or ""


def _edges():
    for folder, _, files in os.walk(os.path.join(ROOT, "bundle")):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            module = rel[: -len(".__init__")] if f == "__init__.py" else rel
            for target in _imports(path, module, f == "__init__.py"):
                if target.startswith("bundle."):
                    yield module, target


def test_every_package_has_a_layer():
    packages = {
        n[:-3] if n.endswith(".py") else n
        for n in os.listdir(os.path.join(ROOT, "bundle"))
        if not n.startswith("_") and (n.endswith(".py") or os.path.isdir(os.path.join(ROOT, "bundle", n)))
    }
    assert packages - {"__pycache__"} == set(LEVEL)


def test_no_import_climbs_a_layer():
    edges = set(_edges())
    assert len(edges) > 100  # the walk found the package's imports
    climbing = {
        (src, dst)
        for src, dst in edges
        if _package(src) in LEVEL and LEVEL.get(_package(dst), -1) > LEVEL[_package(src)]
    }
    assert climbing - set(KNOWN) == set(), "imports that climb a layer (docs/architecture.md)"
    assert set(KNOWN) - climbing == set(), "a known exception is gone: remove it here and in docs/architecture.md"
