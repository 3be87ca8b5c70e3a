"""The package's import graph, read from the source (function-level imports included)."""

import ast

from conftest import REPO

PACKAGE = REPO / "progan"


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = REPO.joinpath(*name.split("."))
    return relative.with_suffix(".py").is_file() or (relative / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("progan"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("progan"):
                for alias in node.names:  # `from progan.training import state` names a module
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if is_module(submodule) else node.module)
        graph[name] = {target for target in targets if target != name}
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


# The floors of the package: a module imports from its own floor or below, never up.
FLOORS = {
    1: ("progan", "progan.errors", "progan.system", "progan.backend", "progan.resolution",
        "progan.images"),
    2: ("progan.config", "progan.schedule", "progan.layers", "progan.networks", "progan.losses",
        "progan.run", "progan.checkpoints", "progan.portable", "progan.dataset"),
    3: ("progan.training", "progan.evaluation", "progan.generation"),
    4: ("progan.cli", "progan.__main__", "progan.api", "progan.dataset.cli",
        "progan.evaluation.cli"),
}


def floor_of(module: str) -> int:
    """The floor of a module: its own entry, else that of the longest listed prefix."""
    best, floor = "", None
    for number, names in FLOORS.items():
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, floor = name, number
    assert floor is not None, f"{module} is on no floor: add it to FLOORS"
    return floor


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"progan.run", "progan.training.trainer", "progan.evaluation.run", "progan.generation",
            "progan.api", "progan.schedule", "progan.checkpoints"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def upward_imports(graph) -> list[str]:
    return sorted(f"{module} (floor {floor_of(module)}) -> {target} (floor {floor_of(target)})"
                  for module, targets in graph.items() for target in targets
                  if floor_of(target) > floor_of(module))


def test_every_module_imports_only_its_own_floor_or_below():
    assert upward_imports(import_graph()) == []
    assert upward_imports({"progan.networks": {"progan.training.step"}}) != []  # the check bites


def test_training_and_evaluation_never_import_each_other_and_generation_no_training():
    def imports(prefix, other):
        return sorted(f"{module} -> {target}" for module, targets in import_graph().items()
                      if module.startswith(prefix) and floor_of(module) == 3
                      for target in targets if target.startswith(other))

    assert imports("progan.training", "progan.evaluation") == []
    assert imports("progan.evaluation", "progan.training") == []
    assert imports("progan.generation", "progan.training") == []


def test_only_the_entry_points_drive_the_trainer():
    importers = {name for name, targets in import_graph().items() if "progan.training.trainer" in targets}
    assert importers <= {"progan.api", "progan.training.bench"}, importers


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_and_help_load_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, progan, progan.run, progan.config, progan.cli\n"
            "progan.cli.build_parser().format_help()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    version = subprocess.run([sys.executable, "-m", "progan", "--version"], capture_output=True,
                             text=True, cwd=REPO)
    assert version.stdout.strip() == f"progan {__import__('progan').__version__}"


def test_the_map_names_every_module_and_its_floor():
    """docs/architecture.md lists every module of the package (by dotted name, or the last
    part of it after its package's name), and every module is on one of FLOORS."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = []
    for name in import_graph():
        floor_of(name)
        short = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0]
        if name in text or f"`{parent}.{short}`" in text or f"`.{short}`" in text:
            continue
        missing.append(name)
    assert missing == [], f"docs/architecture.md does not name {missing}"
