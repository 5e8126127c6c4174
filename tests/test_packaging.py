"""The package builds as a wheel that holds everything it needs at run time: every module, the embedded model, the
EAGLE head and the 7B config, our kernels' C source, the console script, the backends' entry points and the extras."""

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import llava_accel

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("models/default", "models/configs", "eagle/default_head")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (the test extra has it)")
    src = tmp_path_factory.mktemp("src")  # a copy: the build writes build/ and *.egg-info next to its sources
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "llava_accel", src / "llava_accel", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                           "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("llava_accel-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(wheel.namelist())
    package = ROOT / "llava_accel"
    expected = {f"llava_accel/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")}
    for folder in PACKAGE_DATA:
        expected |= {f"llava_accel/{p.relative_to(package).as_posix()}" for p in (package / folder).iterdir()
                     if p.is_file()}
    assert expected - names == set()
    assert "llava_accel/models/default/model.safetensors" in names  # the embedded model: everything runs offline
    assert "llava_accel/gemv.c" in names  # our kernels' source, compiled at first use


def test_the_wheel_metadata(wheel):
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(info))
    assert meta["Name"] == "llava-accel" and meta["Version"] == llava_accel.__version__
    assert {"flash", "quantize", "test"} <= set(meta.get_all("Provides-Extra"))
    entry_points = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "llava-accel = llava_accel.cli:main" in entry_points
    for name in ("eager", "cpu", "compile", "flash", "eagle"):
        assert f"{name} = llava_accel.backends." in entry_points
