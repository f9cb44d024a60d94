"""The reference pages generated at every ``mkdocs build`` / ``mkdocs serve`` (a MkDocs hook,
``hooks:`` in mkdocs.yml): ``reference/configuration.md`` from the YAML files of ``audioml/conf``
(every group, option and key with its default and its ``#`` comment) and ``reference/cli.md``
from each command's ``--help``. Generated at build time, never committed, so they cannot drift
from the code: the strict build in the tests runs this module.

PyYAML (Hydra's own parser) gives the structure and each key's line; it drops comments, so each
key is paired here with the comment on its line (and the comment lines just above it)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "audioml" / "conf"
#: Subtrees left out of the tables: the help text is on the CLI page.
SKIPPED_KEYS = ("hydra.help",)


def scripts() -> dict[str, str]:
    """Console script -> module, from pyproject.toml's [project.scripts]."""
    import tomllib

    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in table.items()}


def primary_configs() -> dict[str, str | None]:
    """Each top-level YAML of ``audioml/conf`` -> the command whose Hydra app it is (its
    ``hydra.help.app_name``), or None for a data file that is not a Hydra config."""
    found = {}
    for file in sorted(CONF.glob("*.yaml")):
        loaded = yaml.safe_load(file.read_text()) or {}
        found[file.name] = ((loaded.get("hydra") or {}).get("help") or {}).get("app_name")
    return found


@dataclass(frozen=True)
class Key:
    path: str       # dotted, from the config root (package included)
    default: str    # the YAML text of the value
    comment: str


@dataclass(frozen=True)
class Option:
    group: str      # '' for a primary config
    name: str
    file: Path
    header: str
    package: str
    defaults: list[tuple[str, str]] = field(default_factory=list)  # (entry, comment)
    keys: list[Key] = field(default_factory=list)


def _comment_start(line: str) -> int | None:
    """Column of the ``#`` that starts the line's comment (outside quotes, after whitespace)."""
    quote = None
    for column, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"" and (column == 0 or line[column - 1] in " [{,:"):
            quote = char
        elif char == "#" and (column == 0 or line[column - 1] in " \t"):
            return column
    return None


def _comment_of(line: str) -> str:
    column = _comment_start(line)
    return "" if column is None else line[column + 1:].strip()


def _is_comment_line(line: str) -> bool:
    return line.lstrip().startswith("#")


def _above(lines: list[str], index: int) -> str:
    """The comment lines directly above line ``index`` at its indentation (its own paragraph)."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    found: list[str] = []
    row = index - 1
    while row >= 0 and _is_comment_line(lines[row]):
        if len(lines[row]) - len(lines[row].lstrip()) != indent:
            break  # a deeper comment continues the previous key's; a shallower one is not about this key
        found.insert(0, lines[row].strip()[1:].strip())
        row -= 1
    if row < 0:
        return ""  # the file's header, not this key's
    return " ".join(text for text in found if not text.startswith("@package"))


def _trailing(lines: list[str], index: int) -> str:
    """A comment on line ``index`` plus the comment-only lines below that continue it (aligned with it)."""
    column = _comment_start(lines[index])
    if column is None:
        return ""
    text = [lines[index][column + 1:].strip()]
    row = index + 1
    while row < len(lines) and _is_comment_line(lines[row]) and lines[row].index("#") == column and column > 0:
        text.append(lines[row].strip()[1:].strip())
        row += 1
    return " ".join(text)


def _describe(lines: list[str], line: int) -> str:
    return " ".join(part for part in (_above(lines, line), _trailing(lines, line)) if part)


def _source(text: str, node: yaml.Node) -> str:
    return " ".join(text[node.start_mark.index:node.end_mark.index].split())


def _value(text: str, node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        if node.style in ("|", ">"):
            return "(text)"
        return _source(text, node) or "null"
    if isinstance(node, yaml.SequenceNode) and not node.flow_style:  # a block list of scalars, as a flow list
        return "[" + ", ".join(_value(text, item) for item in node.value) + "]"
    return _source(text, node)  # a flow collection, as written


def _entry(node: yaml.Node) -> str:
    """A defaults-list entry as written, without its comment: ``override /data: donateacry``."""
    if isinstance(node, yaml.MappingNode):
        return ", ".join(f"{k.value}: {v.value if isinstance(v, yaml.ScalarNode) else '[...]'}" for k, v in node.value)
    return str(node.value)


def _walk(text: str, lines: list[str], node: yaml.Node, prefix: str, out: list[Key]) -> None:
    items: list[tuple[str, yaml.Node, int]]
    if isinstance(node, yaml.MappingNode):
        items = [(str(k.value), v, k.start_mark.line) for k, v in node.value]
    else:
        items = [(str(i), v, v.start_mark.line) for i, v in enumerate(node.value)]
    for name, value, line in items:
        path = f"{prefix}.{name}" if prefix else name
        if any(path == skip or path.startswith(skip + ".") for skip in SKIPPED_KEYS):
            continue
        nested = (isinstance(value, yaml.MappingNode) and not value.flow_style and value.value) or (
            isinstance(value, yaml.SequenceNode) and not value.flow_style
            and any(not isinstance(item, yaml.ScalarNode) for item in value.value))
        if nested:
            comment = _describe(lines, line)
            if comment:
                out.append(Key(path, "", comment))
            _walk(text, lines, value, path, out)
        else:
            out.append(Key(path, _value(text, value), _describe(lines, line)))


def _package(lines: list[str], group: str) -> str:
    for line in lines:
        if not _is_comment_line(line):
            break
        found = re.match(r"#\s*@package\s+(\S+)", line.strip())
        if found:
            return "" if found.group(1) == "_global_" else found.group(1).replace("_group_", group.replace("/", "."))
    return group.replace("/", ".")


def read_option(file: Path, group: str) -> Option:
    """One YAML file of ``audioml/conf`` as an ``Option``."""
    text = file.read_text()
    lines = text.splitlines()
    header = []
    for line in lines:
        if not _is_comment_line(line):
            break
        if not re.match(r"#\s*@package", line.strip()):
            header.append(line.strip()[1:].rstrip()[1:] if line.strip() != "#" else "")
    root = yaml.compose(text)
    defaults: list[tuple[str, str]] = []
    keys: list[Key] = []
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "defaults" and isinstance(value, yaml.SequenceNode):
                defaults = [(_entry(entry), _trailing(lines, entry.start_mark.line)) for entry in value.value]
                root.value = [(k, v) for k, v in root.value if k is not key]
                break
        _walk(text, lines, root, _package(lines, group), keys)
    name = file.relative_to(CONF / group).with_suffix("").as_posix() if group else file.stem
    return Option(group, name, file, "\n".join(header).strip(), _package(lines, group), defaults, keys)


def groups() -> dict[str, list[Option]]:
    """Every config group (``hydra/launcher``, ``model``, ...) with its options; an experiment's
    subfolder is part of the option's name (``experiment=donateacry/panns_mlp``)."""
    found: dict[str, list[Option]] = {}
    for file in sorted(CONF.rglob("*.yaml")):
        parts = file.relative_to(CONF).parts
        if len(parts) == 1:
            continue
        group = "/".join(parts[:-1]) if parts[0] == "hydra" else parts[0]
        found.setdefault(group, []).append(read_option(file, group))
    return found


# ---------------------------------------------------------------- Markdown
def _inline(text: str) -> str:
    """``text`` (a YAML comment) as table-safe Markdown: code spans kept, ``<``, ``>``, ``|`` escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part.replace("|", "&#124;") if part.startswith("`") else
                   re.sub(r"([\\*_\[\]])", r"\\\1", part)
                   .replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
                   for part in parts)


def _code(value: str, breaks: bool = False) -> str:
    """``value`` as inline HTML code, safe in a table cell (Markdown would read ``_x_`` in raw HTML as
    emphasis); with ``breaks``, a line may break after each dot."""
    if not value:
        return ""
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = value.replace("|", "&#124;").replace("_", "&#95;").replace("*", "&#42;").replace("`", "&#96;")
    return f"<code>{value.replace('.', '.<wbr>') if breaks else value}</code>"


def _header_markdown(header: str) -> list[str]:
    """A file's header comment: prose lines as a paragraph, indented lines (commands) as a code block."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []
    for line in header.splitlines() + [""]:
        if line.startswith((" ", "\t")) and line.strip():
            if prose:
                out += [_inline(" ".join(prose)), ""]
                prose = []
            code.append(line.strip())
            continue
        if code:
            out += ["```text", *code, "```", ""]
            code = []
        if line.strip():
            prose.append(line.strip())
        elif prose:
            out += [_inline(" ".join(prose)), ""]
            prose = []
    return out


def _option_markdown(option: Option) -> list[str]:
    out = []
    if option.header:
        out += [*_header_markdown(option.header), ""]
    source = option.file.relative_to(REPO).as_posix()
    out.append(f"<small>`{source}`" + (f", keys under `{option.package}`" if option.package else ", keys at the root")
               + "</small>")
    out.append("")
    if option.defaults:
        out += ["| defaults list, in order | |", "| --- | --- |"]
        out += [f"| `{entry}` | {_inline(comment)} |" for entry, comment in option.defaults]
        out.append("")
    if option.keys:
        out += ["| key | default | what it sets |", "| --- | --- | --- |"]
        out += [f"| {_code(key.path, breaks=True)} | {_code(key.default)} | {_inline(key.comment)} |"
                for key in option.keys]
        out.append("")
    return out


def configuration_page() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the YAML files of `audioml/conf` when the site is built: every config group, "
             "every option with its description, and every key with its default and its comment. "
             "Any key is a command-line override (`key=value`); `group=option` picks an option; "
             "`audioml-train --cfg job ...` prints the composed result. How composition works: "
             "[Configuration](../guide/configuration.md).", "",
             "## The commands' configs", ""]
    configs = primary_configs()
    for name, command in configs.items():
        if command:
            lines += [f"### `{command}` (`{name}`)", "", *_option_markdown(read_option(CONF / name, ""))]
    for name, command in configs.items():
        if not command:
            header = read_option(CONF / name, "").header.split("\n")[0]
            lines += [f"`audioml/conf/{name}` is not a Hydra config but data: {_inline(header)}", ""]
    lines += ["## Config groups", ""]
    all_groups = groups()
    lines += ["| group | options |", "| --- | --- |"]
    lines += [f"| [`{group}`](#{_anchor(group)}) | {', '.join(f'`{o.name}`' for o in options)} |"
              for group, options in all_groups.items()]
    lines.append("")
    for group, options in all_groups.items():
        lines += [f"### `{group}` {{#{_anchor(group)}}}", ""]
        for option in options:
            lines += [f"#### `{group}={option.name}` {{#{_anchor(group + '-' + option.name)}}}", "",
                      *_option_markdown(option)]
    return "\n".join(lines)


def _anchor(text: str) -> str:
    return "group-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@functools.lru_cache(maxsize=None)
def _help(argv: tuple[str, ...]) -> str:
    return help_text(list(argv), cached=False)


def help_text(argv: list[str], cached: bool = True) -> str:
    """``argv``'s --help output (run as ``python -m <module>`` with this interpreter; the module
    from pyproject.toml's scripts)."""
    if cached:
        return _help(tuple(argv))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOML_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(REPO), COLUMNS="100", NO_COLOR="1", TERM="dumb")
    done = subprocess.run([sys.executable, "-m", scripts()[argv[0]], *argv[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout.rstrip()


def commands() -> list[list[str]]:
    """Every --help page: ``audioml``, each console script of pyproject.toml, and each subcommand
    of the argparse commands that have them (read from their own usage line)."""
    pages = [["audioml", "--help"]] + [[name, "--help"] for name in scripts() if name != "audioml"]
    for argv in list(pages):
        usage = re.search(r"^usage: \S+ \[-h\] \{([\w,-]+)\}", help_text(argv), re.M)
        if usage:
            index = pages.index(argv)
            pages[index + 1:index + 1] = [[argv[0], sub, "--help"] for sub in usage.group(1).split(",")]
    return pages


def cli_page() -> str:
    argvs = commands()
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(help_text, argvs))
    lines = ["# Command-line reference", "",
             "Each command's own `--help`, captured when the site is built. Every command also runs as "
             "`audioml <command> ...` (`audioml train ...` is `audioml-train ...`). The keys of the Hydra "
             "commands are in the [configuration reference](configuration.md).", ""]
    for argv, text in zip(argvs, texts):
        lines += [f"## `{' '.join(argv[:-1])}`", "", f"```console\n$ {' '.join(argv)}\n{text}\n```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- MkDocs hook
GENERATED = {"reference/configuration.md": configuration_page, "reference/cli.md": cli_page}


def on_files(files, config):  # noqa: ANN001 (MkDocs' hook signature)
    from mkdocs.structure.files import File

    for path, make in GENERATED.items():
        files.append(File.generated(config, path, content=make()))
    return files


# ---------------------------------------------------------------- error messages
#: Exceptions that are bugs or contracts between modules, not messages for a user.
NOT_FOR_USERS = {"NotImplementedError", "AssertionError", "StopIteration", "SystemExit", "KeyboardInterrupt"}
#: What the user was doing, by the module that raised (first match wins).
ACTIVITIES = [
    ("Setting up and composing a config", ("config.py", "entry.py", "commands.py", "run/fit/trainer.py",
                                           "run/fit/distributed.py", "logs.py", "files.py")),
    ("Datasets, your own data and downloads", ("data/",)),
    ("Models, pretrained weights, features and augmentation", ("models/", "features/", "augment/", "losses.py",
                                                               "metrics.py")),
    ("Probing encoders", ("probe.py", "run/fit/probing.py", "run/fit/emobox.py")),
    ("Sweeps and hyperparameter search", ("run/record/sweep.py", "run/record/status.py", "run/record/aggregate.py",
                                          "search/")),
    ("Comparing runs and statistics", ("compare.py", "run/use/comparison.py", "run/use/items.py", "stats/")),
    ("Using a trained model: eval, predict, export, serve", ("run/use/", "run/serving.py", "run/record/lineage.py",
                                                             "run/fit/calibration.py", "evaluate.py", "predict.py",
                                                             "export.py")),
    ("Classical models on features", ("classical/",)),
    ("Reproducing the studies", ("reproduce/",)),
    ("Training runs, resume and MLflow", ("",)),
]


@dataclass(frozen=True)
class Message:
    kind: str
    text: str
    module: str   # path relative to the repository
    line: int


def _message_text(node) -> str | None:  # noqa: ANN001 (an ast expression)
    """The message an exception is built with, placeholders as ``<name>``; None when not a string."""
    import ast

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                expression = ast.unparse(value.value)
                name = re.sub(r"[^A-Za-z0-9_.]+", " ", expression).split()
                parts.append(f"<{name[-1] if name else '...'}>")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        left = _message_text(node.left)
        right = _message_text(node.right) if isinstance(node.op, ast.Add) else ""
        return None if left is None or right is None else left + right
    return None


def error_messages() -> list[Message]:
    """Every exception audioml raises with a message, except the kinds in ``NOT_FOR_USERS``."""
    import ast

    found = []
    for file in sorted((REPO / "audioml").rglob("*.py")):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            kind = ast.unparse(node.exc.func).rsplit(".", 1)[-1]
            text = _message_text(node.exc.args[0])
            if kind in NOT_FOR_USERS or not text or len(text) < 12:
                continue
            found.append(Message(kind, " ".join(text.split()), file.relative_to(REPO).as_posix(), node.lineno))
    return found


def _activity(module: str) -> str:
    relative = module.removeprefix("audioml/")
    return next(title for title, prefixes in ACTIVITIES if any(relative.startswith(p) for p in prefixes))


def errors_page() -> str:
    messages = error_messages()
    lines = ["# Every error message", "",
             f"All {len(messages)} messages audioml's code raises, extracted from the source when the site is built "
             "(`<name>` stands for the value filled in), grouped by what you were doing. Most say what to do; "
             "the common situations are explained in [Troubleshooting](../troubleshooting.md). A command "
             "prints a mistake of the command line, a config or the data as one line and exits with status 2; "
             "its traceback is in the job's log file (and on the terminal with `HYDRA_FULL_ERROR=1`).", ""]
    for title, _ in ACTIVITIES:
        group = [m for m in messages if _activity(m.module) == title]
        if not group:
            continue
        lines += [f"## {title}", "", "| message | raised as | in |", "| --- | --- | --- |"]
        lines += [f"| {_inline(m.text)} | `{m.kind}` | `{m.module}:{m.line}` |" for m in group]
        lines.append("")
    return "\n".join(lines)


GENERATED["reference/errors.md"] = errors_page
