"""The documentation site cannot lie: ``mkdocs build --strict`` succeeds (broken links, missing
anchors and pages left out of the nav fail it), the generated references cover every config key
and error message, and every shell block marked runnable in ``docs/`` and README.md runs as
written on the sample data (``tests/helpers/docs.py``): the quick blocks in the default run,
every block of a page, in order, with ``-m slow``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.docs import PAGES, run_blocks, run_page, runnable_blocks
from helpers.runners import REPO

#: Pages whose runnable blocks a test of their own runs (with assertions on their output).
OWN_TESTS = {
    "guide/encoders.md": "tests/test_docs_encoders.py",
    "guide/hyperparameter-search.md": "tests/docs/test_hyperparameter_search_guide.py",
    "guide/comparing-runs.md": "tests/docs/test_comparing_runs_page.py",
    "guide/classical.md": "tests/docs/test_classical_guide.py",
    "guide/probing.md": "tests/test_docs_probing.py",
}


def _reference_module():
    spec = importlib.util.spec_from_file_location("docs_reference", PAGES / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pages_with_blocks() -> list[Path]:
    pages = [REPO / "README.md", *sorted(p for p in PAGES.rglob("*.md") if "hooks" not in p.parts)]
    return [page for page in pages if runnable_blocks(page)
            and page.relative_to(PAGES if page.is_relative_to(PAGES) else REPO).as_posix() not in OWN_TESTS]


def _name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def _run(page: Path, folder: Path, include_slow: bool) -> str:
    process = run_page(page, folder, include_slow)
    output = process.stdout + process.stderr
    assert process.returncode == 0, (f"{_name(page)}: a runnable block failed ({process.returncode}); "
                                     f"the blocks' output:\n{output[-8000:]}")
    return output


# ---------------------------------------------------------------- the site
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """The whole site, generated references and API pages included, with every warning an error."""
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOML_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(REPO), NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    configuration = (site / "reference" / "configuration" / "index.html").read_text()
    configuration = configuration.replace("<wbr>", "").replace("&#95;", "_")
    assert "model=efficientat_mn04" in configuration and "data.group_pattern" in configuration
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "audioml-eval: test a trained model" in cli and "prepare-donateacry" in cli
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "compose_config" in api and "DonateacryDataModule" in api and "concordance_cc" in api
    assert "cannot be reached" in (site / "reference" / "errors" / "index.html").read_text()


def test_every_page_is_in_the_nav() -> None:
    """mkdocs only reports a page missing from the nav; the config makes it a warning, which the
    strict build fails on. Checked here too, so that the message names the page."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))

    def listed(node) -> set[str]:
        if isinstance(node, str):
            return {node}
        if isinstance(node, list):
            return set().union(*(listed(item) for item in node))
        return set().union(*(listed(value) for value in node.values()))

    generated = set(_reference_module().GENERATED)
    pages = {p.relative_to(PAGES).as_posix() for p in PAGES.rglob("*.md") if "hooks" not in p.parts}
    assert pages | generated == listed(config["nav"])


# ---------------------------------------------------------------- generated references
def _leaves(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items()
                for k, v in _leaves(item, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{prefix}.{i}").items()}
    return {prefix: value}


def _lookup(tree, path: str):
    """The value at dotted ``path`` in ``tree``, whose keys may hold dots themselves (search spaces)."""
    if not path:
        return tree
    if isinstance(tree, list):
        head, _, rest = path.partition(".")
        return _lookup(tree[int(head)], rest)
    key = max((k for k in tree if path == k or path.startswith(f"{k}.")), key=len)
    return _lookup(tree[key], path[len(key) + 1:])


def _reads_as(default: str, value) -> bool:
    """Whether a documented default is ``value``; a block list is shown as ``[a, b]`` with its items
    as written, which need not be valid flow YAML (``- ${best_of:${monitor}}``)."""
    try:
        return yaml.safe_load(default) == value
    except yaml.YAMLError:
        return isinstance(value, list) and [yaml.safe_load(item) for item in default[1:-1].split(", ")] == value


def test_the_configuration_reference_has_every_key_of_every_yaml() -> None:
    """Against PyYAML's own reading: every option of every group; every leaf key under a documented
    key, whose default reads back as the value there (a flow mapping is documented whole)."""
    reference = _reference_module()
    groups = reference.groups()
    files = {p for p in reference.CONF.rglob("*.yaml") if len(p.relative_to(reference.CONF).parts) > 1}
    assert {option.file for options in groups.values() for option in options} == files
    for options in groups.values():
        for option in options:
            loaded = yaml.safe_load(option.file.read_text()) or {}
            loaded.pop("defaults", None)
            root = {option.package: loaded} if option.package else loaded
            documented = {key.path: key.default for key in option.keys if key.default}
            for path, default in documented.items():
                assert default == "(text)" or _reads_as(default, _lookup(root, path)), (option.file, path)
            leaves = {f"{option.package}.{k}" if option.package else k for k in _leaves(loaded) if k}
            for leaf in leaves:
                assert any(leaf == path or leaf.startswith(path + ".") for path in documented), (option.file, leaf)


def test_the_configuration_reference_pairs_keys_with_their_comments() -> None:
    reference = _reference_module()
    conf = reference.CONF
    keys = {k.path: k for k in reference.read_option(conf / "data" / "donateacry.yaml", "data").keys}
    assert keys["data.labels"].comment == "multiclass (5 reasons) | binary (hungry vs not_hungry)"
    assert keys["data.clip_seconds"].default == "7.0" and keys["data.clip_seconds"].comment == ""
    logger = {k.path: k for k in reference.read_option(conf / "logger" / "mlflow.yaml", "logger").keys}
    assert logger["logger.system_metrics"].comment.endswith("true / false decide here")  # a continued comment
    assert logger["logger.relog"].comment.startswith("A run finished before is skipped")          # comment lines above
    panns = reference.read_option(conf / "experiment" / "donateacry" / "panns_mlp.yaml", "experiment")
    assert panns.name == "donateacry/panns_mlp" and panns.package == ""
    assert "monitor" in {k.path for k in panns.keys} and "override /model: panns_cnn14" in dict(panns.defaults)
    assert panns.header.startswith("Infant cry, donateacry, Italian study")
    assert "hydra/launcher" in reference.groups() and "hydra/sweeper/sampler" in reference.groups()


def test_the_error_reference_lists_the_messages_audioml_raises() -> None:
    reference = _reference_module()
    messages = reference.error_messages()
    texts = {m.text for m in messages}
    assert any(text.startswith("the MLflow tracking server <shown> cannot be reached") for text in texts)
    assert any("is outside the packages a checkpoint may name" in text for text in texts)
    assert len(messages) > 300 and all(reference._activity(m.module) for m in messages)


# ---------------------------------------------------------------- runnable blocks
def test_every_runnable_page_is_run_by_a_test() -> None:
    for page, test in OWN_TESTS.items():
        assert (PAGES / page).is_file() and page.split("/")[-1] in (REPO / test).read_text(), (page, test)
    assert REPO / "README.md" in _pages_with_blocks()


@pytest.mark.parametrize("page", [p for p in _pages_with_blocks() if any(not b.slow for b in runnable_blocks(p))],
                         ids=_name)
def test_the_quick_blocks_of_a_page_run(page: Path, tmp_path: Path, shared_data: Path, shared_weights: Path) -> None:
    _run(page, tmp_path, include_slow=False)


@pytest.mark.slow  # trainings on the sample data: minutes per page on two cores
@pytest.mark.parametrize("page", _pages_with_blocks(), ids=_name)
def test_every_block_of_a_page_runs_in_order(page: Path, tmp_path: Path, shared_data: Path,
                                              shared_weights: Path) -> None:
    _run(page, tmp_path, include_slow=True)


def test_the_readmes_links_resolve() -> None:
    """README.md is read on GitHub and PyPI, outside the site: its relative links name files that exist."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    relative = [link for link in links if not link.startswith(("http://", "https://"))]
    assert relative and all((REPO / link).is_file() for link in relative), [
        link for link in relative if not (REPO / link).is_file()]


def test_the_readme_is_read_in_five_minutes():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_a_failing_documented_command_fails_the_page_naming_its_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n<!-- runnable -->\n```bash\necho first\n```\n\n"
                    "<!-- runnable -->\n```bash\naudioml-train data=no_such_dataset\n```\n")
    blocks = runnable_blocks(page)
    assert [b.line for b in blocks] == [3, 8] and not any(b.slow for b in blocks)
    with pytest.raises(AssertionError, match=r"the block at line 8 failed \(2\)") as failed:
        run_blocks(blocks, tmp_path / "run")
    assert "Could not find 'data/no_such_dataset'" in str(failed.value)
