"""The package's imports flow one way: no cycle among the modules of `workflow` (top-level and
function-level imports alike; TYPE_CHECKING blocks excluded), so the bottom (runs.py, the protocol
table, config.py) never loads the LLM layer."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_imports() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "workflow").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for b in node.body for n in ast.walk(b)}
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycle():
    graph = project_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def path_back(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                return path[path.index(other):] + [node, other] if other in path else [node, other]
            if other not in state and (cycle := path_back(other, path + [node])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = path_back(module, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_bottom_does_not_load_the_llm_layer():
    graph = project_imports()
    for module in ("workflow.runs", "workflow.protocol_table", "workflow.config"):
        assert not any(m.startswith("workflow.llm") for m in graph[module]), module
