"""The import contract: the runtime (``regatt_sdk``) never imports the export package or torch,
not even indirectly; the torch commands reach the CLI only through entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[1] / "sdk" / "regatt_sdk"
FORBIDDEN = ("torch", "torchvision", "timm", "onnx", "onnxscript", "regatt_export")


def _top(name: str) -> str:
    return name.split(".")[0]


def test_no_sdk_module_imports_the_export_side():
    """Static: no import statement, and no ``import_module("...")`` string, names them."""
    bad = []
    for path in sorted(SDK.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module",
                "__import__",
                "require",
            ):
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            names = [n for n in names if _top(n) in FORBIDDEN]
            bad += [f"{path.relative_to(SDK.parent)}:{node.lineno}: {n}" for n in names]
    assert not bad, "runtime imports of the export side:\n" + "\n".join(bad)


BLOCKER = """
import importlib.abc, sys
FORBIDDEN = %r
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_every_sdk_module_imports_without_torch_or_the_export_package():
    """Dynamic: with torch and ``regatt_export`` unimportable, every runtime module imports,
    the CLI builds (without the torch commands) and its runtime commands answer --help."""
    code = (
        BLOCKER % (FORBIDDEN,)
        + """
import pkgutil, importlib, regatt_sdk
mods = [m.name for m in pkgutil.walk_packages(regatt_sdk.__path__, "regatt_sdk.") if not m.name.endswith("__main__")]
for m in mods:
    importlib.import_module(m)
from regatt_sdk.cli.app import build, main
app = build()
names = sorted(c.name for c in app.registered_commands)
print("COMMANDS", " ".join(names))
print("MODULES", len(mods))
print("LOADED", [m for m in sys.modules if m.split(".")[0] in FORBIDDEN])
"""
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert int(lines["MODULES"]) > 40
    assert {"encode", "search", "eval", "bench", "doctor", "explain", "index"} <= set(lines["COMMANDS"].split())
    assert lines["LOADED"] == "[]"
