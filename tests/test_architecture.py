"""The package's shape, checked from its source: no import cycle, no private name imported across
modules, no stage module that asks which backbone it holds, and no name tests on dataset formats
or backbones outside their registries (``zsvss_nb.datasets``, ``zsvss_nb.backbones``)."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from zsvss_nb.backbones import REGISTRY as BACKBONE_FAMILIES
from zsvss_nb.datasets import format_names

PACKAGE = Path(__file__).resolve().parents[1] / "zsvss_nb"
STAGES = ("features", "context", "refine", "upsample", "pipeline")
BACKBONE_NAMES = {f.name for f in BACKBONE_FAMILIES} | {
    n for f in BACKBONE_FAMILIES for n in f.builtin
}
FORMAT_NAMES = set(format_names())


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _lazy_getattr_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a module-level ``__getattr__`` (PEP 562 lazy re-exports)."""
    skip: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skip.update(id(n) for n in ast.walk(node))
    return skip


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every runtime import of ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree) | _lazy_getattr_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("zsvss_nb"):
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("zsvss_nb"):
                continue
            names = [a.name for a in node.names]
            # "from .pkg import submodule" depends on the submodule itself
            subs = [n for n in names if f"{target}.{n}" in MODULES]
            for sub in subs:
                found.append((f"{target}.{sub}", [], node.lineno))
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return found


def test_every_import_resolves_to_a_module_of_the_package():
    for name in MODULES:
        for target, _, line in imports(name):
            assert target in MODULES, f"{MODULES[name]}:{line} imports unknown {target}"


def test_no_import_cycle():
    graph = {name: {t for t, _, _ in imports(name) if t != name} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name in MODULES:
        for target, names, line in imports(name):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                offenders.append(f"{MODULES[name].name}:{line} imports {private} from {target}")
    assert not offenders, offenders


@pytest.mark.parametrize("stage", STAGES)
def test_stage_modules_never_ask_which_backbone_they_hold(stage):
    tree = ast.parse(MODULES[f"zsvss_nb.{stage}"].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr != "kind", f"{stage}.py:{node.lineno} reads .kind"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value not in BACKBONE_NAMES, f"{stage}.py:{node.lineno}: {node.value!r}"


def test_backends_do_not_import_each_other():
    families = ("zsvss_nb.backbones.sd", "zsvss_nb.backbones.svd", "zsvss_nb.backbones.dinov2")
    for name in MODULES:
        own = next((f for f in families if name == f or name.startswith(f + ".")), None)
        if own is None:
            continue
        for target, _, line in imports(name):
            other = next((f for f in families if target == f or target.startswith(f + ".")), None)
            assert other in (None, own), f"{MODULES[name]}:{line} imports {target}"
            # a backend needs only the contract, the shared kernels and the configs
            assert not target.startswith(
                ("zsvss_nb.pipeline", "zsvss_nb.features", "zsvss_nb.upsample", "zsvss_nb.run.cli")
            ), f"{MODULES[name]}:{line} imports the stage {target}"


def test_module_sizes():
    """A module past about 600 lines likely holds more than one concern: a warning, not a rule
    (the rules that follow concerns are the import and registry tests here)."""
    for path in MODULES.values():
        lines = len(path.read_text().splitlines())
        if lines > 600:
            warnings.warn(f"{path} has {lines} lines; does it hold one concern?", stacklevel=1)


# the modules that use backbones and dataset formats without being their registry
CONSUMERS = tuple(f"zsvss_nb.{s}" for s in STAGES) + tuple(
    f"zsvss_nb.{f}"
    for f in ("evaluation", "methods", "io", "kernels", "notebook", "run.cli", "run.runner")
)


def _strings(node: ast.AST | None) -> Iterator[str]:
    """The string constants of ``node`` and of the tuple/list/set literal it is."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _strings(element)


def _reads_kind(node: ast.AST) -> bool:
    """``x.kind`` other than a dtype's (``arr.dtype.kind`` is numpy's type code)."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "kind"
        and not (isinstance(node.value, ast.Attribute) and node.value.attr == "dtype")
    )


def name_tests(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for every test of a value against ``names`` in ``source``: a comparison or
    membership test with one of them, a dict literal keyed by them, a ``match`` case on them,
    and any comparison of a ``.kind``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            found += [(node.lineno, repr(v)) for o in operands for v in _strings(o) if v in names]
            found += [(node.lineno, ".kind") for o in operands if _reads_kind(o)]
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            found += [
                (k.lineno, f"dict key {v!r}") for k in keys for v in _strings(k) if v in names
            ]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, f"case {v!r}") for v in _strings(node.value) if v in names]
    return found


def test_the_name_test_check_finds_planted_dispatch():
    planted = (
        "strict = ds.name != 'vspw'\n"
        "if fmt in ('camvid', 'camvid32'):\n    pass\n"
        "COLOURS = {'cityscapes': 1}\n"
        "if backbone.kind == other:\n    pass\n"
        "match fmt:\n    case 'davis':\n        pass\n"
        "ok = arr.dtype.kind not in 'iub' and name == 'vspw-like' and kind == 'tiny-ish'\n"
    )
    found = name_tests(planted, FORMAT_NAMES | BACKBONE_NAMES)
    assert [line for line, _ in found] == [1, 2, 2, 4, 5, 8], found
    assert "'vspw'" in found[0][1] and "dict key 'cityscapes'" in found[3][1]


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith(CONSUMERS)])
def test_no_format_or_backbone_name_tests_outside_their_registries(name):
    """Dispatch on a dataset format or backbone lives in its registry (a field of the format or
    of the Backbone class): a stage, the evaluation, a method, the viz or the CLI never tests
    which one it holds."""
    found = name_tests(MODULES[name].read_text(), FORMAT_NAMES | BACKBONE_NAMES)
    assert not found, [f"{MODULES[name]}:{line}: {what}" for line, what in found]


TOP_LEVEL = {"__init__", "__main__", "config", "fieldtypes", "errors"} | set(STAGES)
FOLDERS = {"backbones", "datasets", "evaluation", "io", "kernels", "methods", "notebook", "run"}


def test_top_level_shows_the_stages_and_every_other_concern_lives_in_a_folder():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules == TOP_LEVEL, sorted(modules ^ TOP_LEVEL)
    assert folders == FOLDERS, sorted(folders ^ FOLDERS)


def _defined(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _from_own_submodules(tree: ast.Module) -> set[str]:
    """The names a package ``__init__`` imports from the modules of its own folder."""
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        for alias in node.names
    }


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_re_exports_another_modules_names(name):
    """No compatibility layer: what a module lists in ``__all__`` it defines itself (the lazy
    ``__getattr__`` namespaces of ``zsvss_nb`` and ``notebook.viz`` are the public entries). A
    package's ``__init__`` is the public entry of its folder: it may also list what the modules
    of that folder define, and nothing from elsewhere."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        return
    listed = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            listed = [e.value for e in node.value.elts]
    own = _defined(tree)
    if path.name == "__init__.py":
        own |= _from_own_submodules(tree)
    borrowed = sorted(set(listed) - own)
    assert not borrowed, f"{name} re-exports {borrowed}"
