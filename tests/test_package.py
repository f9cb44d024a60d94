"""audioml as an installed package: the wheel carries its configs and the search-path plugin,
and, unpacked outside the repository and first on the path, composes and runs a training job."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers.runners import REPO


def test_wheel_holds_the_configs_and_runs_from_any_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True, text=True, timeout=300)
    wheel, = wheels.glob("audioml-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("audioml/conf/train.yaml", "audioml/conf/eval.yaml", "audioml/conf/predict.yaml",
                     "audioml/conf/__init__.py", "audioml/conf/data/folder.yaml", "audioml/conf/data/csv.yaml",
                     "audioml/conf/model/cnn.yaml", "audioml/conf/hydra/default.yaml",
                     "audioml/conf/reproduce.yaml", "audioml/reproduce/cli.py",
                     "audioml/data/manifests/donateacry-corpus.sha256", "audioml/data/manifests/ravdess.sha256",
                     "audioml/data/manifests/emotify.sha256",
                     "hydra_plugins/audioml_searchpath/__init__.py", "hydra_plugins/audioml_launchers/__init__.py"):
        assert expected in names, expected
    assert sum(n.startswith("audioml/conf/") and n.endswith(".yaml") for n in names) == \
        sum(1 for _ in (REPO / "audioml" / "conf").rglob("*.yaml"))

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run([sys.executable, "-c", "import audioml.config as c; print(c.CONFIG_DIR)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()) == site / "audioml" / "conf"  # the wheel's copy, not the checkout
    registry = subprocess.run([sys.executable, "-m", "audioml.reproduce", "all", "--list", "--data-dir", str(work)],
                              cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert registry.returncode == 0 and "ravdess/gender_cnn (random 70/15/15 of the files): skipped: no ravdess data" \
        in registry.stdout, registry.stderr[-2000:]
    process = subprocess.run([sys.executable, "-m", "audioml.train", "data=synthetic", "model=cnn",
                              "data.clips_per_class=6", "data.num_groups=6", "+trainer.fast_dev_run=true"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    assert list((work / "outputs" / "runs").glob("synthetic-cnn-*/config.yaml"))


def test_quick_commands_do_not_import_the_training_stack():
    """``--help`` and ``audioml-data list`` stay fast because torch, lightning and mlflow are
    imported only where a command uses them (timed by benchmarks/startup.py)."""
    probe = ("import atexit, importlib, sys\n"
             "heavy = ('torch', 'lightning', 'mlflow', 'transformers', 'timm', 'librosa')\n"
             "atexit.register(lambda: print('HEAVY', sorted(m for m in heavy if m in sys.modules)))\n"
             "module = sys.argv[1]\n"
             "sys.argv = [module, *sys.argv[2:]]\n"
             "importlib.import_module(module).main()\n")
    for module, arguments in (("audioml.train", ["--help"]), ("audioml.evaluate", ["--help"]),
                              ("audioml.predict", ["--help"]), ("audioml.compare", ["--help"]),
                              ("audioml.export", ["--help"]), ("audioml.classical.cli", ["--help"]),
                              ("audioml.data.cli", ["list"]), ("audioml.reproduce.cli", ["--help"])):
        process = subprocess.run([sys.executable, "-c", probe, module, *arguments], cwd=REPO,
                                 capture_output=True, text=True, timeout=120)
        assert "HEAVY []" in process.stdout, (module, process.stdout[-500:], process.stderr[-2000:])
