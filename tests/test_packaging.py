"""What the wheel holds: every package folder, the connectors under a streamseq-owned name, the demo's data,
and extras that keep a library user's install small."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def installed_name(folder: Path) -> str:
    """The import name setuptools gives a source folder (package-dir mapping first)."""
    rel = folder.relative_to(ROOT).as_posix()
    for name, where in sorted(SETUPTOOLS["package-dir"].items(), key=lambda kv: -len(kv[1])):
        if rel == where or rel.startswith(where + "/"):
            return name + rel[len(where):].replace("/", ".")
    return rel.replace("/", ".")


def test_every_package_folder_is_in_the_wheel():
    folders = [p.parent for base in ("streamseq", "connectors") for p in (ROOT / base).rglob("*.py")
               if "__pycache__" not in p.parts and p.parent.name != "schemas"]
    missing = sorted({installed_name(f) for f in folders} - set(SETUPTOOLS["packages"]))
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_connectors_install_under_a_streamseq_name_and_the_checkout_link_points_there():
    assert SETUPTOOLS["package-dir"]["streamseq_connectors"] == "connectors"
    assert "connectors" not in SETUPTOOLS["packages"]
    link = ROOT / "streamseq_connectors"
    assert link.is_symlink() and link.resolve() == (ROOT / "connectors").resolve()
    for group, entries in PYPROJECT["project"]["entry-points"].items():
        for name, target in entries.items():
            assert target.startswith(("streamseq.", "streamseq_connectors.")), f"{group} {name}: {target}"


def test_nothing_imports_the_bare_connectors_name():
    """One name for one module: `connectors.x` beside `streamseq_connectors.x` would be two copies."""
    wrong = []
    for base in ("streamseq", "connectors", "tests", "bench"):
        for path in (ROOT / base).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "connectors"]
    assert not wrong, "import streamseq_connectors instead: " + ", ".join(wrong)


def test_the_demo_data_ships_with_its_licence():
    data = SETUPTOOLS["package-data"]["streamseq.replay_data"]
    assert SETUPTOOLS["package-dir"]["streamseq.replay_data"] == "replay_data"
    for name in data:
        assert (ROOT / "replay_data" / name).is_file(), name
    assert "README.md" in data  # names the source and the licence of parking.csv
    toml = tomllib.loads((ROOT / "replay_data" / "parking.toml").read_text())
    assert toml["source"]["files"] == ["parking.csv"] and "parking.csv" in data


def test_a_library_install_stays_small():
    core = {re.split(r"[<>=\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
    assert core == {"torch", "river", "polars", "pyarrow", "numpy", "orjson", "safetensors"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"kafka", "report", "demo", "test"} <= set(extras)
    assert "streamseq[kafka,report,demo]" in extras["test"]  # `make test` installs what the tests import
    # the librdkafka transport is opt-in: its own extra, in no other but test
    assert any(d.startswith("confluent-kafka") for d in extras["confluent"])
    assert not any("confluent" in d for name in ("kafka", "report", "demo", "all") for d in extras[name])


def test_python_versions():
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    declared = {c.rsplit(" ", 1)[-1] for c in PYPROJECT["project"]["classifiers"] if re.search(r":: 3\.\d+$", c)}
    assert declared == {"3.11", "3.12", "3.13"}
