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


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"progan.run", "progan.training.trainer", "progan.evaluation.run", "progan.generate"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_only_the_command_line_drives_the_trainer():
    importers = {name for name, targets in import_graph().items() if "progan.training.trainer" in targets}
    assert importers <= {"progan.cli", "progan.training.bench"}, importers


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
