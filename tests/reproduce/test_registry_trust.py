"""A reproduction registry is data (issue 35, 3d): its runners are audioml's own entry points and
its overrides are config overrides, never interpreter options, Hydra settings or ``_target_``s."""

from __future__ import annotations

import pytest
import yaml
from helpers.runners import run_entry_point

from audioml.reproduce.registry import REGISTRY_FILE, load_registry


def _registry(tmp_path, change):
    raw = yaml.safe_load(REGISTRY_FILE.read_text())
    change(raw)
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda r: r["runners"]["train"].update(module="pdb", always=["-c", "!touch pwned", "-c", "q"]),
     "module='pdb': a runner is one of audioml's entry points"),
    (lambda r: r["runners"]["train"].update(module="audioml.train", always=["-c"]), "'-c' is not an override"),
    (lambda r: r["runners"]["train"].update(always=["hydra.searchpath=[file:///tmp]"]), "hydra.searchpath"),
    (lambda r: r["runners"]["train"].update(quick=["+hydra/callbacks=evil"]), "hydra/callbacks"),
    (lambda r: r["entries"][0].update(overrides=["model.backbone._target_=os.system"]), "_target_"),
    (lambda r: r["entries"][0]["study_protocol"].update(overrides=["--config-dir=/tmp"]), "--config-dir"),
    (lambda r: r["entries"][0].update(experiment="../../evil"), "not an experiment config name"),
])
def test_a_registry_that_would_run_code_is_refused_naming_the_field(tmp_path, change, message):
    with pytest.raises(ValueError, match="registry") as error:
        load_registry(_registry(tmp_path, change))
    assert message in str(error.value)


def test_the_shipped_registry_passes_its_own_checks():
    assert len(load_registry().entries) >= 10


def test_the_command_refuses_such_a_registry_in_one_line_and_runs_nothing(tmp_path):
    registry = _registry(tmp_path, lambda r: r["runners"]["train"].update(
        module="pdb", always=["-c", f"!touch {tmp_path / 'pwned'}", "-c", "q"]))
    process = run_entry_point("audioml.reproduce", "all", "--quick", "--registry", str(registry),
                              "--out", str(tmp_path / "out"), check=False)
    assert process.returncode == 2 and "module='pdb'" in process.stderr and "Traceback" not in process.stderr
    assert not (tmp_path / "pwned").exists()
