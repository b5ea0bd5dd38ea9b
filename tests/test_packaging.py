"""The wheel carries converters/ and calibration/, and the device side works without TensorFlow."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel and installed (without dependencies) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(REPO)],
        check=True, capture_output=True,
    )
    wheel = next((tmp / "dist").glob("edgeresnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel)],
        check=True, capture_output=True,
    )
    return {"names": names, "site": tmp / "site", "tmp": tmp}


def test_wheel_holds_the_declarative_folders_and_the_reference_model(installed):
    names = installed["names"]
    for f in ("converters/cpu.toml", "converters/edgetpu.toml", "converters/gpu.toml",
              "converters/edgetpu_ops.toml", "calibration/presets.toml"):
        assert f"edgeresnet/_resources/{f}" in names, f
    assert "edgeresnet/assets/reference_digits_resnet8.h5" in names


def _run_installed(installed, code):
    env = dict(os.environ, PYTHONPATH=str(installed["site"]))
    # Run from an unrelated folder so nothing resolves through the repository.
    return subprocess.run([sys.executable, "-c", code], cwd=installed["tmp"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_installed_package_finds_its_resources_anywhere(installed):
    res = _run_installed(installed, (
        "import edgeresnet.targets as t, edgeresnet.device.presets as c;"
        "print(t.resource_dir('converters')); print(sorted(t.targets())); print(sorted(c.load_presets()))"
    ))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert str(installed["site"]) in lines[0]
    assert lines[1] == "['cpu', 'edgetpu', 'gpu']"
    assert "caffe" in lines[2] and "torch" in lines[2]


def test_device_side_runs_without_tensorflow(installed, shared_data):
    """inspect and bench with TensorFlow made unimportable, as on a Raspberry Pi."""
    model = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    res = _run_installed(installed, (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None\n"
        "from edgeresnet.device.inspection import inspect_tflite\n"
        "from edgeresnet.device.bench import BenchConfig, benchmark\n"
        f"r = inspect_tflite({str(model)!r}).to_dict()\n"
        "print(r['verdicts']['edgetpu']['ok'], r['verdicts']['cpu']['ok'])\n"
        f"b = benchmark({str(model)!r}, BenchConfig(warmup=1, repeats=5))\n"
        "print(b.interpreter, b.median_ms > 0)\n"
    ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True", "ai-edge-litert", "True"]
