"""What a release needs beyond the code: setup.py's message when torch is missing, the sdist
manifest carrying every source, one version. (scripts/check_release.sh builds and installs the
real sdist and wheel in the test command.)"""

import os
import re
import subprocess
import sys

import dabdetr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_py_without_torch_names_the_fix():
    # torch made unimportable (as in an isolated build environment), then setup.py run as pip would.
    code = "import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; " \
           "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--no-build-isolation" in result.stderr and "has no torch" in result.stderr


def test_manifest_carries_every_extension_source():
    with open(os.path.join(ROOT, "MANIFEST.in")) as f:
        manifest = f.read()
    assert re.search(r"^graft csrc$", manifest, re.M)  # setup.py compiles csrc/**, headers and .cu included
    sources = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(ROOT, "csrc")) for f in files]
    assert any(s.endswith(".cuh") for s in sources) and any(s.endswith(".inc") for s in sources)


def test_version_is_written_once():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "dabdetr.__version__"' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)  # no literal version in [project]
    assert re.fullmatch(r"\d+\.\d+\.\d+", dabdetr.__version__)
