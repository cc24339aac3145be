"""The package's layers only point down (docs/design.md → Layers).

Every module under ``kerasmlic/`` is parsed with :mod:`ast` (nothing is
imported), and every import statement counts: at module level, inside a
function, under ``if TYPE_CHECKING``. The layers, lowest first::

    ground      errors, categories, version, quiet_start, processes (import no
                kerasmlic module)
    data        data/*, metrics/*
    models      models/*
    evaluation  evaluation/*
    training    training/*
    apps        export/*, tuning/*, reporting/*
    cli         cli/*, __main__, api (the notebook API behind the facade)

A module may import its own layer and the layers below it. Inside one layer
(data with metrics; export, tuning and reporting) imports may go sideways,
but never round: the cycle check covers them. The checks:

(a) no upward import (``module -> module`` listed with its line);
(b) sideways imports stay inside one layer: export, tuning and reporting are
    one layer and may use each other (``reporting.reproduce`` runs
    ``tuning.tune``), as data and metrics may; (c) keeps them from going round;
(c) no import cycle between modules, function-level imports included
    (strongly connected components of the module graph);
(d) no private name across modules: ``from x import _y``, or
    ``alias._y`` where ``alias`` names an imported kerasmlic module;
(e) every module is assigned a layer, so a new top-level module or package
    has to be placed here (and in docs/design.md) before the suite passes.

``kerasmlic/__init__.py`` is the public facade: as an importer it is exempt
(it may re-export from any layer), but no module may import it (``import
kerasmlic``, or ``from kerasmlic import name`` of a name that is not a
submodule). An import of ``kerasmlic.a.b`` is an edge to the module ``a.b``
only: Python also runs the packages' ``__init__`` on the way, but those are
not counted, or every package that re-exports its submodules would be a cycle.
A dynamic import (``importlib.import_module(name)``) is not seen.
"""

import ast
import os
import textwrap
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "kerasmlic"

LAYERS = (
    ("ground", ("errors", "categories", "version", "quiet_start", "processes")),
    ("data", ("data", "metrics")),
    ("models", ("models",)),
    ("evaluation", ("evaluation",)),
    ("training", ("training",)),
    ("apps", ("export", "tuning", "reporting")),
    ("cli", ("cli", "__main__", "api")),
)
"""``(layer, members)`` lowest first; a member is a module or package under ``kerasmlic``."""


@dataclass(frozen=True)
class Edge:
    """One import of a kerasmlic module by another."""

    source: str
    target: str
    line: int

    def __str__(self):
        return f"{self.source} -> {self.target} (line {self.line})"


@dataclass(frozen=True)
class PrivateUse:
    """A private name of another module, imported or read through a module alias."""

    source: str
    target: str
    name: str
    line: int

    def __str__(self):
        return f"{self.source} -> {self.target}.{self.name} (line {self.line})"


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def find_modules(root, package=PACKAGE):
    """Return ``{module name: path}`` of every ``.py`` file of a package folder.

    Args:
        root: The folder holding the package folder.
        package: The package's name.

    Returns:
        A dict; a package's ``__init__.py`` is named after the package.
    """
    modules = {}
    base = os.path.join(root, package)
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(folder, root).split(os.sep)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            stem = name[: -len(".py")]
            parts = rel if stem == "__init__" else [*rel, stem]
            modules[".".join(parts)] = os.path.join(folder, name)
    return modules


def _resolve_from(module, is_package, node):
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _dotted(node):
    """``a.b.c`` of a chain of attribute reads on a name, or None."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(names)])


def scan(modules, package=PACKAGE):
    """Parse every module; return its imports of the package's modules.

    Args:
        modules: ``find_modules``'s dict.
        package: The package's name.

    Returns:
        ``(edges, private)``: the :class:`Edge` list and the :class:`PrivateUse` list.
    """
    edges, private = [], []

    def ours(name):
        return name == package or name.startswith(package + ".")

    for module, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = os.path.basename(path) == "__init__.py"
        aliases = {}  # local name -> the module it is bound to

        def add(target, line, module=module):
            if target != module:
                edges.append(Edge(module, target, line))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if not ours(alias.name):
                        continue
                    add(alias.name, node.lineno)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:  # ``import a.b.c`` binds ``a``
                        aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(module, is_package, node)
                if not ours(base):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:  # ``from package import submodule``
                        add(sub, node.lineno)
                        aliases[alias.asname or alias.name] = sub
                        continue
                    add(base, node.lineno)
                    if _is_private(alias.name) and base != module:
                        private.append(PrivateUse(module, base, alias.name, node.lineno))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            dotted = _dotted(node.value)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            if head not in aliases:
                continue
            target = ".".join(filter(None, [aliases[head], rest]))
            if target in modules and target != module:
                private.append(PrivateUse(module, target, node.attr, node.lineno))
    return list(dict.fromkeys(edges)), list(dict.fromkeys(private))


def layer_of(module, package=PACKAGE, layers=LAYERS):
    """Return the index of a module's layer in ``layers``, or None when it has none."""
    rel = module[len(package) + 1 :] if module.startswith(package + ".") else None
    if rel is None:
        return None
    for index, (_, members) in enumerate(layers):
        for member in members:
            if rel == member or rel.startswith(member + "."):
                return index
    return None


def unassigned(modules, package=PACKAGE, layers=LAYERS):
    """Return the modules (the facade aside) that belong to no layer."""
    return sorted(m for m in modules if m != package and layer_of(m, package, layers) is None)


def upward_edges(edges, package=PACKAGE, layers=LAYERS):
    """Return the edges that point up a layer, or at the facade (``package`` itself)."""
    bad = []
    for edge in edges:
        if edge.source == package:
            continue  # the facade may re-export anything
        if edge.target == package:
            bad.append(edge)
            continue
        source, target = (
            layer_of(edge.source, package, layers),
            layer_of(edge.target, package, layers),
        )
        if source is not None and target is not None and target > source:
            bad.append(edge)
    return bad


def cycles(edges):
    """Return the import cycles: strongly connected components of two or more modules.

    Args:
        edges: :class:`Edge` list.

    Returns:
        A list of sorted module lists (Tarjan's algorithm, iterative).
    """
    graph = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def problems(root, package=PACKAGE, layers=LAYERS):
    """Return every broken rule of a package tree, as readable lines (empty: all hold)."""
    modules = find_modules(root, package)
    edges, private = scan(modules, package)
    lines = [f"no layer: {m}" for m in unassigned(modules, package, layers)]
    lines += [f"upward import: {e}" for e in upward_edges(edges, package, layers)]
    for component in cycles(edges):
        inside = [e for e in edges if e.source in component and e.target in component]
        lines.append(
            f"import cycle: {', '.join(component)} via " + "; ".join(str(e) for e in inside)
        )
    lines += [f"private name imported: {p}" for p in private]
    return lines


# --- the package itself ---


@pytest.fixture(scope="module")
def package_graph():
    modules = find_modules(REPO)
    edges, private = scan(modules)
    return modules, edges, private


def test_the_package_is_found(package_graph):
    modules, edges, _ = package_graph
    for name in ("kerasmlic", "kerasmlic.errors", "kerasmlic.cli", "kerasmlic.training.config"):
        assert name in modules
    assert any(e.source == "kerasmlic.cli" for e in edges)


def test_every_module_has_a_layer(package_graph):
    modules, _, _ = package_graph
    missing = unassigned(modules)
    assert not missing, (
        "modules in no layer (add them to LAYERS and docs/design.md):\n" + "\n".join(missing)
    )


def test_no_import_points_up(package_graph):
    _, edges, _ = package_graph
    bad = upward_edges(edges)
    assert not bad, "imports that point up a layer or at the facade:\n" + "\n".join(map(str, bad))


def test_no_import_cycle(package_graph):
    _, edges, _ = package_graph
    found = cycles(edges)
    lines = []
    for component in found:
        lines += [str(e) for e in edges if e.source in component and e.target in component]
    assert not found, "import cycles:\n" + "\n".join(lines)


def test_no_private_name_across_modules(package_graph):
    _, _, private = package_graph
    assert not private, "private names used across modules:\n" + "\n".join(map(str, private))


def test_the_ground_floor_imports_nothing_of_the_package(package_graph):
    _, edges, _ = package_graph
    ground = [e for e in edges if layer_of(e.source) == 0]
    assert not ground, "\n".join(map(str, ground))


# --- the checker on planted trees ---


def _tree(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / "kerasmlic" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in [p for p in (tmp_path / "kerasmlic").rglob("*") if p.is_dir()]:
        (folder / "__init__.py").touch()
    (tmp_path / "kerasmlic" / "__init__.py").touch()
    return str(tmp_path)


CLEAN = {
    "__init__.py": "from kerasmlic.cli import main\n",
    "errors.py": "class UsageError(Exception):\n    pass\n",
    "data/pipeline.py": "from kerasmlic.errors import UsageError\n",
    "models/base.py": "from kerasmlic.data import pipeline\n",
    "evaluation/evaluate.py": "from kerasmlic.models.base import *\n",
    "training/trainer.py": "def f():\n    from kerasmlic.evaluation.evaluate import x\n",
    "training/config.py": "from kerasmlic.models.base import y\n",
    "export/run.py": "from kerasmlic.tuning.search import tune\n",
    "tuning/search.py": "from kerasmlic.training import trainer\n",
    "cli/__init__.py": "def main():\n    import kerasmlic.export.run\n",
}


def test_a_clean_tree_has_no_problem(tmp_path):
    assert problems(_tree(tmp_path, CLEAN)) == []


def test_a_planted_upward_import_is_listed(tmp_path):
    files = dict(CLEAN)
    # Inside a function, as the hidden ones were.
    files["evaluation/evaluate.py"] = "def f():\n    from kerasmlic.training.config import load\n"
    found = problems(_tree(tmp_path, files))
    assert found == [
        "upward import: kerasmlic.evaluation.evaluate -> kerasmlic.training.config (line 2)"
    ]


def test_an_import_of_the_facade_is_listed(tmp_path):
    files = dict(CLEAN)
    files["export/run.py"] = "def version():\n    import kerasmlic\n    return kerasmlic.v\n"
    files["data/pipeline.py"] = "from kerasmlic import errors, version_string\n"
    found = problems(_tree(tmp_path, files))
    assert "upward import: kerasmlic.export.run -> kerasmlic (line 2)" in found
    assert "upward import: kerasmlic.data.pipeline -> kerasmlic (line 1)" in found
    # ``errors`` is a submodule: importing it through the package is fine.
    assert not any("-> kerasmlic.errors" in line for line in found)


def test_a_cycle_inside_one_layer_is_listed(tmp_path):
    files = dict(CLEAN)
    files["tuning/search.py"] = "def f():\n    from kerasmlic.export import run\n"
    found = problems(_tree(tmp_path, files))
    assert len(found) == 1 and found[0].startswith(
        "import cycle: kerasmlic.export.run, kerasmlic.tuning.search via "
    )


def test_a_cycle_through_three_modules_is_one_component(tmp_path):
    files = dict(CLEAN)
    files["training/a.py"] = "from kerasmlic.training import b\n"
    files["training/b.py"] = "import kerasmlic.training.c as c\n"
    files["training/c.py"] = "def f():\n    from kerasmlic.training.a import g\n"
    found = problems(_tree(tmp_path, files))
    assert len(found) == 1
    assert found[0].startswith(
        "import cycle: kerasmlic.training.a, kerasmlic.training.b, kerasmlic.training.c via"
    )


def test_private_names_across_modules_are_listed(tmp_path):
    files = dict(CLEAN)
    files["data/pipeline.py"] = "from kerasmlic.errors import _hidden, UsageError\n"
    files["evaluation/evaluate.py"] = (
        "from kerasmlic.models import base\nimport kerasmlic.models.base as mb\n"
        "import kerasmlic.data.pipeline\n"
        "def f(self):\n"
        "    return base._config, mb._other, kerasmlic.data.pipeline._x, self._mine, base.__doc__\n"
    )
    found = problems(_tree(tmp_path, files))
    assert found == [
        "private name imported: kerasmlic.data.pipeline -> kerasmlic.errors._hidden (line 1)",
        "private name imported: kerasmlic.evaluation.evaluate -> kerasmlic.models.base._config "
        "(line 5)",
        "private name imported: kerasmlic.evaluation.evaluate -> kerasmlic.models.base._other "
        "(line 5)",
        "private name imported: kerasmlic.evaluation.evaluate -> kerasmlic.data.pipeline._x "
        "(line 5)",
    ]


def test_a_module_outside_every_layer_is_listed(tmp_path):
    files = dict(CLEAN)
    files["helpers.py"] = "x = 1\n"
    files["plugins/extra.py"] = "x = 1\n"
    found = problems(_tree(tmp_path, files))
    assert found == [
        "no layer: kerasmlic.helpers",
        "no layer: kerasmlic.plugins",
        "no layer: kerasmlic.plugins.extra",
    ]


def test_relative_imports_are_resolved(tmp_path):
    files = dict(CLEAN)
    files["evaluation/evaluate.py"] = "from ..training import config\nfrom . import other\n"
    files["evaluation/other.py"] = "x = 1\n"
    found = problems(_tree(tmp_path, files))
    assert found == [
        "upward import: kerasmlic.evaluation.evaluate -> kerasmlic.training.config (line 1)"
    ]
