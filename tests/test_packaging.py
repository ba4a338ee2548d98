"""What a wheel built from the repository installs: one top-level package, no `inference`."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_no_top_level_inference(tmp_path):
    had_build = (ROOT / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True)
    finally:
        if not had_build:  # setuptools builds in the source tree: leave it as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    wheel = next(tmp_path.glob("cradle_pyro-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"cradle_pyro", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                    + ".dist-info"}, tops
    assert "cradle_pyro/inference/cli.py" in names and "cradle_pyro/model.py" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"cradle-pyro = cradle_pyro.inference.cli:main" in entry


def test_the_model_side_never_imports_the_inference_side():
    code = ("import sys, cradle_pyro, cradle_pyro.model, cradle_pyro.guides, cradle_pyro.data; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['cradle_pyro', 'inference'] or m.split('.')[0] == 'inference'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent)
    assert out.stdout.strip() == "[]", out.stdout
