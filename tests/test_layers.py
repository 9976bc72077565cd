"""The layers point one way (README, "Architecture"): a module imports only its own layer or lower ones.

    commands  ─►  runtime  ─►  training · storage · evaluation  ─►  settings  ─►  engine · models · wire  ─►  utilities

Connectors see only the ports, the records and wire formats, the settings they are built
from, and the utilities. Every import statement counts, including the ones inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {  # module (or package prefix) -> layer; higher may import lower, never the reverse
    "streamseq.errors": 0, "streamseq.version": 0, "streamseq.timeutil": 0, "streamseq.clock": 0, "streamseq.keyspace": 0,
    "streamseq.logs": 0, "streamseq.plugins": 0, "streamseq.threads": 0,
    "streamseq.records": 1, "streamseq.grid": 1, "streamseq.ports": 1, "streamseq.memory": 1,
    "streamseq.windowing": 1, "streamseq.calibration": 1, "streamseq.ensemble": 1, "streamseq.pipeline": 1, "streamseq.models": 1,
    "streamseq.forecast_json": 1, "streamseq.state_codec": 1, "streamseq.calendar": 1, "streamseq.features": 1,
    "streamseq.config": 2, "streamseq.specs": 2,
    "streamseq.trainer": 3, "streamseq.store": 3, "streamseq.registry": 3, "streamseq.evaluation": 3,
    "streamseq.report": 3, "streamseq.synthetic": 3,
    "streamseq.compose": 4, "streamseq.worker": 4, "streamseq.checkpoint": 4, "streamseq.backtesting": 4,
    "streamseq.hotswap": 4, "streamseq.metrics": 4, "streamseq.progress": 4, "streamseq.trainer_process": 4,
    "streamseq.localbroker": 4, "streamseq.api": 4, "streamseq.offload": 4,
    "streamseq.commands": 5, "streamseq.__main__": 5, "streamseq": 5,
}
NAMES = {0: "utilities", 1: "engine/models/wire", 2: "settings", 3: "training/storage/evaluation", 4: "runtime",
         5: "commands"}
CONNECTOR_MAY_SEE = {"streamseq.ports", "streamseq.records", "streamseq.memory", "streamseq.forecast_json",
                     "streamseq.state_codec", "streamseq.config", "streamseq.errors", "streamseq.timeutil",
                     "streamseq.clock", "streamseq.logs"}
# Inside the engine layer, models see only the records, the grid and the utilities (never the pipeline).
MODELS_MAY_SEE = {"streamseq.records", "streamseq.grid", "streamseq.calendar", "streamseq.features"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, mod: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    mod = mod or module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level:
                # `from . import x` / `from .pkg import y`: each name may be a module
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            out.append((node.lineno, target))
    return out


def layer_of(name: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def files(folder: str):
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_engine_module_has_a_layer():
    missing = [module_name(p) for p in files("streamseq") if layer_of(module_name(p)) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


def test_imports_point_down_the_layers():
    wrong = []
    for path in files("streamseq"):
        mod = module_name(path)
        own = layer_of(mod)
        for line, target in imports(path):
            if target.split(".")[0] in ("connectors", "streamseq_connectors"):
                wrong.append(f"{mod}:{line} imports {target} (the engine never imports connectors)")
                continue
            if not target.startswith("streamseq") or target == "streamseq":
                continue
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                wrong.append(f"{mod}:{line} ({NAMES[own]}) imports {target} ({NAMES[theirs]})")
            if mod.startswith("streamseq.models") and not target.startswith("streamseq.models") \
                    and theirs != 0 and not any(target == m or target.startswith(m + ".") for m in MODELS_MAY_SEE):
                wrong.append(f"{mod}:{line} (a model) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_connectors_see_only_ports_records_wire_settings_and_utilities():
    wrong = []
    for path in files("connectors"):
        for line, target in imports(path):
            if target.startswith("streamseq") and target != "streamseq" and not any(
                    target == m or target.startswith(m + ".") for m in CONNECTOR_MAY_SEE):
                wrong.append(f"{module_name(path)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The test above can fail: an engine module importing the runtime, lazily, is reported."""
    bad = tmp_path / "windowing.py"
    bad.write_text("def f():\n    from .worker import StreamWorker\n    from . import compose\n")
    found = [t for _, t in imports(bad, "streamseq.windowing")]
    assert "streamseq.worker" in found and "streamseq.compose" in found
    assert layer_of("streamseq.worker") > layer_of("streamseq.windowing")
