"""The device side (edgeresnet/device/) and the CLI import with TensorFlow, tf-keras, Keras and tfmot missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
BLOCKED = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization")
for name in BLOCKED:
    sys.modules[name] = None  # `import tensorflow` (or any submodule) now raises ImportError
import edgeresnet.device

def host():
    return sorted(n for n in sys.modules if n == "edgeresnet.host" or n.startswith("edgeresnet.host."))

device, pulled = [], {}
for info in pkgutil.walk_packages(edgeresnet.device.__path__, "edgeresnet.device."):
    before = set(host())
    importlib.import_module(info.name)
    device.append(info.name)
    new = sorted(set(host()) - before)
    if new:
        pulled[info.name] = new
device_host = host()
import edgeresnet.cli
print(json.dumps({"device": device, "pulled": pulled, "device_host": device_host,
                  "blocked": [n for n in BLOCKED if sys.modules.get(n) is not None],
                  "tf": sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED and sys.modules[n] is not None)}))
"""


@pytest.fixture(scope="module")
def imported() -> dict:
    """Every module under edgeresnet/device/ (pkgutil), then edgeresnet.cli, imported in one fresh Python
    where TensorFlow and friends cannot be imported; what each device module pulled from edgeresnet.host."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_device_module_and_the_cli_import_without_tensorflow(imported):
    expected = sorted(p.stem for p in (REPO / "edgeresnet" / "device").glob("*.py") if p.stem != "__init__")
    assert sorted(name.rsplit(".", 1)[1] for name in imported["device"]) == expected
    assert imported["blocked"] == [] and imported["tf"] == []
    assert imported["pulled"] == {}, imported["pulled"]  # no device module reaches into the host


def test_device_modules_import_nothing_from_the_host(imported):
    assert imported["device_host"] == [], imported["pulled"]


def test_no_module_over_600_lines_and_no_function_over_60():
    """The layout's size rule (docs/architecture.md): a module or function past it is split, not grown."""
    import ast

    over = []
    for path in sorted((REPO / "edgeresnet").rglob("*.py")):
        source = path.read_text()
        if source.count("\n") > 600:
            over.append(f"{path.relative_to(REPO)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                over.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not over, over
