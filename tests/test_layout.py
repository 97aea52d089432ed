"""The package's shape: the public API of `import dabdetr`, and the import layers of pyproject.toml
(the contract holds for the code, and an import that runs upward breaks it)."""

import os
import shutil
import subprocess
import sys

import pytest

import dabdetr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_public_api_resolves_every_name():
    for name in dabdetr.__all__:
        assert getattr(dabdetr, name) is not None, name
    assert dabdetr.Trainer.__module__ == "dabdetr.training.trainer"
    assert dabdetr.export.__module__ == "dabdetr.deployment.export"
    assert dabdetr.from_pretrained.__module__ == "dabdetr.weights.pretrained"
    with pytest.raises(AttributeError, match="no attribute 'Trainers'"):
        dabdetr.Trainers  # noqa: B018


def test_using_a_model_does_not_load_training_or_deployment():
    code = ("import sys, dabdetr; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('scipy', 'matplotlib') or m.startswith(('dabdetr.training', 'dabdetr.deployment'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def _lint_imports(root):
    pytest.importorskip("importlinter")
    lint = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = {**os.environ, "PYTHONPATH": root}  # the analysed copy, not the installed package
    return subprocess.run([lint, "--config", os.path.join(root, "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True)


def test_import_layers_contract_is_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(os.path.join(ROOT, "dabdetr"), tmp_path / "dabdetr", ignore=shutil.ignore_patterns("*.so"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    detector = tmp_path / "dabdetr" / "models" / "detector.py"
    detector.write_text(detector.read_text() + "\nfrom dabdetr.weights.files import atomic_write  # noqa\n")
    result = _lint_imports(str(tmp_path))
    assert result.returncode != 0
    assert "dabdetr.models is not allowed to import dabdetr.weights" in result.stdout
