"""Floors: the compression core imports neither ``exporters`` nor ``runtime_bench``; no cycle between those two.

The core is every module of ``edgecomp`` but the CLI and the main job (``edgecomp.cli``, ``edgecomp.cli_emulated``,
``edgecomp.run``), which sit on top of all three packages. The helpers the issue names have one
home each (checked here by scanning the sources for the old hand-written copies).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ON_TOP = {"edgecomp.cli", "edgecomp.cli_emulated", "edgecomp.run"}
UPPER = ("exporters", "runtime_bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _core_files() -> list[Path]:
    return [p for p in sorted((ROOT / "edgecomp").rglob("*.py")) if _module_name(p) not in ON_TOP]


def _imported(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def _offenders(files, banned) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in files for line, mod in _imported(p)
            if mod.split(".")[0] in banned]


_BLOCKED_IMPORT = r"""
import importlib, json, pkgutil, sys

class Block:
    # A meta-path finder that refuses the upper packages, however they are asked for.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("exporters", "runtime_bench"):
            raise ImportError(f"{name} is above the compression core")
        return None

sys.meta_path.insert(0, Block())
import edgecomp
names = [m.name for m in pkgutil.walk_packages(edgecomp.__path__, "edgecomp.")
         if m.name not in ("edgecomp.cli", "edgecomp.cli_emulated", "edgecomp.run")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"imported": names, "failed": failed,
                  "upper": sorted(m for m in sys.modules if m.split(".")[0] in ("exporters", "runtime_bench"))}))
"""


def test_core_imports_with_exporters_and_runtime_bench_blocked():
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORT], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["failed"] == {}
    assert reply["upper"] == []
    # The walk saw the whole core (subpackages included).
    assert {"edgecomp.pruning", "edgecomp.zoo", "edgecomp.metrics", "edgecomp.subproc", "edgecomp.codec",
            "edgecomp.data.base", "edgecomp.models.base"} <= set(reply["imported"])
    assert not ON_TOP & set(reply["imported"])


def test_core_sources_never_import_the_upper_packages():
    files = _core_files()
    assert len(files) > 20
    assert _offenders(files, UPPER) == []


def test_runtime_bench_never_imports_exporters():
    files = sorted((ROOT / "runtime_bench").rglob("*.py"))
    assert files
    assert _offenders(files, ("exporters",)) == []


def test_the_scan_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from runtime_bench.metrics import accuracy\n"
                     "def g():\n    import exporters.base\n"
                     "def h():\n    __import__('exporters')\n")
    assert [mod for _, mod in _imported(probe)] == ["runtime_bench.metrics", "exporters.base", "exporters"]


# -- one home per helper ---------------------------------------------------------------------------

_SOURCES = ("edgecomp", "exporters", "runtime_bench", "scripts")


def _source_files():
    return [p for d in _SOURCES for p in sorted((ROOT / d).rglob("*.py"))]


def _grep(pattern: str, skip: set[str]) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p.relative_to(ROOT)}:{n}" for p in _source_files() if str(p.relative_to(ROOT)) not in skip
            for n, line in enumerate(p.read_text().splitlines(), 1) if rx.search(line)]


def test_first_line_of_an_exception_has_one_home():
    # edgecomp.errors.first_line / one_line; the copies looked like
    # str(exc).splitlines()[0] if str(exc) else ..., or text = str(exc).strip().splitlines().
    pattern = r"str\((exc|e|err|error|first|second)\)(\.strip\(\))?\.splitlines\(\)"
    assert _grep(pattern, {"edgecomp/errors.py"}) == []


def test_python_workers_are_spawned_by_one_helper():
    # edgecomp.subproc.run_module starts every "python -m ..." worker of the three packages
    # (runtime_bench.adb runs the adb binary, runtime_bench.emulation mmdebstrap and qemu; the
    # scripts may start outside tools).
    packages = [p for p in _source_files() if not str(p.relative_to(ROOT)).startswith("scripts/")]
    spawning = {str(p.relative_to(ROOT)) for p in packages if re.search(r"\bsubprocess\b|sys\.executable", p.read_text())}
    assert spawning == {"edgecomp/subproc.py", "runtime_bench/adb.py", "runtime_bench/emulation.py"}
    assert "sys.executable" not in (ROOT / "runtime_bench/emulation.py").read_text()


def test_first_line_and_one_line():
    from edgecomp.errors import EdgecompError, first_line, one_line

    assert first_line(ValueError("  bad shape\n  at layer 3")) == "bad shape"
    assert first_line(KeyError()) == "KeyError" and first_line(OSError(), default="not an image") == "not an image"
    assert one_line(ValueError("bad")) == "ValueError: bad" and one_line(RuntimeError()) == "RuntimeError"
    assert one_line(EdgecompError("no such file", fix="check it")) == "no such file; check it"
    assert one_line(ValueError("x" * 400)).endswith("...") and len(one_line(ValueError("x" * 400))) == 300


def test_run_module_reports_how_the_child_ended(tmp_path):
    from edgecomp.subproc import run_module

    # exporters.probe answers one JSON line, even for a file that does not exist.
    run = run_module("exporters.probe", [str(tmp_path / "missing.tflite")], timeout_s=120)
    assert run.returncode == 0 and not run.timed_out and run.signal_name is None
    assert "does not exist" in run.json_line()["result"]
    bad = run_module("edgecomp.no_such_module", timeout_s=60)
    assert bad.returncode == 1 and bad.json_line() is None and "No module named" in bad.last_line()
    slow = run_module("timeit", ["-n", "1", "-r", "1", "import time; time.sleep(30)"], timeout_s=1)
    assert slow.timed_out and slow.returncode is None
