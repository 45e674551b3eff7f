"""The layering of README's "Architecture" table, read from the sources: each module imports only from
its own layer or those below (lazy imports inside functions count too), and importing a module changes
neither the environment nor the import path (no os.environ / sys.path at import)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "causalrec"
# Lowest first: the first part of a module's name below causalrec (causalrec.<part>...) -> its layer.
LAYERS = (
    ("base", ("io", "logs", "registry")),
    ("data", ("data", "validation")),
    ("models", ("models", "policy", "evaluation", "text")),
    ("causal", ("causal",)),
    ("services", ("serving", "monitoring", "persistence")),
    ("params", ("config",)),  # built on the library's own config types (SimulationConfig, the monitored columns)
    ("pipeline", ("pipeline",)),
    ("flows", ("flows",)),
    ("shells", ("cli", "service", "__main__", "__init__")),
)
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(("causalrec", *parts))] = ast.parse(path.read_text(), str(path))
    return out


def _part(module: str) -> str:
    """causalrec.<part>.x -> part (the package's own __init__: "__init__")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imported(tree: ast.Module) -> set[str]:
    """Every causalrec module a module imports, at import time or inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from causalrec import pipeline` imports causalrec.pipeline
            names |= {f"causalrec.{a.name}" for a in node.names} if node.module == "causalrec" else {node.module}
    return {n for n in names if n.startswith("causalrec.")}


def _run_at_import(tree: ast.Module):
    """The nodes a module runs when imported: its top level and class bodies, not function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def test_every_module_imports_only_its_layer_and_those_below():
    modules = _modules()
    assert len(modules) > 50  # the package was found
    unplaced = sorted({_part(m) for m in modules} - set(RANK))
    assert not unplaced, f"place these in LAYERS (and README's Architecture table): {unplaced}"
    upward = [f"{m} ({LAYERS[RANK[_part(m)]][0]}) imports {t} ({LAYERS[RANK[_part(t)]][0]})"
              for m, tree in modules.items() for t in sorted(_imported(tree)) if RANK[_part(t)] > RANK[_part(m)]]
    assert not upward, "\n".join(upward)


def test_no_module_touches_the_environment_or_the_import_path_at_import():
    hidden = [f"{m}:{node.lineno} {_dotted(node)}" for m, tree in _modules().items() for node in _run_at_import(tree)
              if isinstance(node, ast.Attribute) and _dotted(node).startswith(("os.environ", "os.getenv", "os.putenv",
                                                                                "sys.path"))]
    assert not hidden, "\n".join(sorted(set(hidden)))


def test_the_checks_see_what_they_look_for():
    """Both checks on a module that breaks both rules (so neither passes by seeing nothing)."""
    tree = ast.parse("import os, sys\nsys.path.insert(0, 'src')\nWORKERS = int(os.environ.get('W', '1'))\n"
                     "class S:\n    n = os.getenv('N')\n"
                     "def later():\n    os.putenv('X', '1')\n    from causalrec.pipeline import STAGES\n")
    seen = {_dotted(n) for n in _run_at_import(tree) if isinstance(n, ast.Attribute)}
    assert {"sys.path.insert", "os.environ.get", "os.getenv"} <= seen and "os.putenv" not in seen  # not at import
    assert _imported(tree) == {"causalrec.pipeline"} and RANK[_part("causalrec.pipeline")] > RANK["models"]
