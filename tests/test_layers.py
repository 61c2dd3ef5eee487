"""The package's dependencies point one way: every module imports only its own layer or
lower ones (ARCHITECTURE.md), and there is no import cycle among the modules of
``factory`` and ``models``, counting imports inside functions too (a cycle that only
loads because its imports are deferred is still a cycle)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("factory", "models")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from factory import storage`` names a module; ``from x.y import f`` x.y
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                if t in modules and t != name and t not in PACKAGES:
                    graph[name].add(t)
    return graph


# Bottom to top. ``models`` (the nn.Modules) sits with the method it implements; the two
# configs are the floor every layer may read.
LAYERS = (
    ("factory.config", "models.config", "factory.io"),
    ("models", "factory.method"),
    ("factory.train", "factory.evaluation"),
    ("factory.pipelines",),
    ("factory.jobs",),
)


def layer_of(module: str) -> int:
    """The layer of a module: the longest prefix named in LAYERS wins."""
    best, rank = "", -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    if rank < 0:
        raise KeyError(f"{module} is in no layer: add its package to LAYERS and ARCHITECTURE.md")
    return rank


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in sorted(graph.items())
        if a not in PACKAGES
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "factory.method.labeler" in graph["factory.jobs.label"]  # a known edge
    assert "factory.method.students" in graph["factory.train.nets"]  # one inside a function


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_sits_in_a_layer_and_imports_only_down():
    graph = import_graph()
    for module in graph:
        if module not in PACKAGES:
            layer_of(module)
    assert upward_imports(graph) == []


def test_an_upward_import_is_found():
    graph = {"factory.io.storage": {"factory.jobs.label"}, "factory.jobs.label": set()}
    assert upward_imports(graph) == [
        "factory.io.storage (layer 0) imports factory.jobs.label (layer 4)"
    ]
    assert layer_of("models.config") == 0 and layer_of("models.cgcn") == 1
