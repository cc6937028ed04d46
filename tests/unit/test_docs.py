"""The README and the docs tell the truth about the interface: every `tinytrain ...` command and option they
show exists in the click group, every `make` target they show is in the Makefile, and every setting they name
(in TOML blocks, in `--set KEY=...`, in the settings table) is a real one. Each check must also fail on a made-up
name, which the last tests prove."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import click
import pytest

from tinytrain.cli import cli
from tinytrain.errors import ConfigError
from tinytrain.optimizers import OPTIMIZERS
from tinytrain.spec.experiment import apply_override, axis_names, validate
from tinytrain.spec.settings import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# `tinytrain` where a command starts: at the start of a line or after `$ `, a path (.venv/bin/), `python -m`,
# `&&`, `;`, `|`, `(` or a comment's `#`; not as an argument (`ruff format tinytrain tests`)
COMMAND = re.compile(r"\btinytrain[ \t]+(?=[a-z-])")
COMMAND_START = re.compile(r"(?:^\s*(?:\$\s+)?|/|-m\s+|(?:&&|;|\||\(|#)\s*)$")
MAKE = re.compile(r"(?:^|(?<=[\s(]))make[ \t]+([a-z][a-z-]*)")
PLACEHOLDER = re.compile(r"^[A-Z_]+$")  # KEY, FILE, RUN_ID: a name standing for a value
# Options of other tools that the docs show on their own, as `--name`: whose they are
OTHER_TOOLS_OPTIONS = {
    "--group": "pip install",
    "--repeat": "benchmarks/bench.py",
    "--nthreads": "dask worker",
    "--app-name": "mlflow server",
}


def code_of(text: str) -> list[str]:
    """The code a document shows: each fenced block's text, and each inline code span."""
    blocks = [body for _language, body in FENCE.findall(text)]
    prose = FENCE.sub("", text)
    return blocks + INLINE.findall(prose)


def toml_blocks(text: str) -> list[str]:
    return [body for language, body in FENCE.findall(text) if language == "toml"]


def command_lines(code: str) -> list[list[str]]:
    """Each `tinytrain ...` command in a piece of code, as its words (up to a comment, a pipe, `&&`, `)`)."""
    commands = []
    for line in code.splitlines():
        for match in COMMAND.finditer(line):
            if not COMMAND_START.search(line[: match.start()]):
                continue
            lexer = shlex.shlex(line[match.end() :], posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = []
            try:
                for word in lexer:
                    if word and set(word) <= set("();<>|&"):
                        break
                    words.append(word)
            except ValueError:  # an unclosed quote in a line that is output, not a command
                continue
            commands.append(words)
    return commands


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for parameter in command.params:
        names.update(parameter.opts)
        names.update(parameter.secondary_opts)
    return names


def command_problems(words: list[str]) -> list[str]:
    """What in one `tinytrain ...` command does not exist: the command, an option, a --set key."""
    words = [word.strip("[]") for word in words]
    words = [word for word in words if word and word not in ("…", "...")]
    shown = "tinytrain " + " ".join(words)
    if not words:
        return []
    if words[0].startswith("-"):
        unknown = [word for word in words if word.startswith("-") and word not in option_names(cli)]
        return [f"{shown}: the group has no option {word}" for word in unknown]
    command = cli.commands.get(words[0])
    if command is None:
        return [f"{shown}: no command {words[0]!r} (commands: {', '.join(sorted(cli.commands))})"]
    problems = []
    options = option_names(command)
    for index, word in enumerate(words[1:], start=1):
        if not word.startswith("-") or word in ("-", "--"):
            continue
        name, _, value = word.partition("=")
        if name not in options:
            problems.append(f"{shown}: {words[0]} has no option {name}")
            continue
        if name == "--set":
            value = value or (words[index + 1] if index + 1 < len(words) else "")
            key = value.partition("=")[0]
            if key and not PLACEHOLDER.match(key):
                try:
                    apply_override({}, value)
                except ConfigError as error:
                    problems.append(f"{shown}: {error}")
    return problems


def lone_option_problems(code: str) -> list[str]:
    """An option shown on its own (`--until-separated`) is an option of some tinytrain command."""
    if not code.startswith("--"):
        return []
    name = re.split(r"[= ]", code)[0]
    known = option_names(cli).union(*(option_names(command) for command in cli.commands.values()))
    if name in known or name in OTHER_TOOLS_OPTIONS:
        return []
    return [f"{name}: no tinytrain command has this option"]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def make_problems(code: str, targets: set[str]) -> list[str]:
    return [f"make {target}: no such target in the Makefile" for target in MAKE.findall(code) if target not in targets]


@contextlib.contextmanager
def example_plugin_importable():
    """The docs' plugin examples name the repository's example package by import path: make it importable."""
    folder = str(ROOT / "examples" / "plugin" / "src")
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def names_example_entry_points(raw: dict) -> bool:
    """Whether an experiment names the example plugin by its entry-point names (found only once it is installed)."""
    project = tomllib.loads((ROOT / "examples" / "plugin" / "pyproject.toml").read_text())["project"]
    names = {name for group in project["entry-points"].values() for name in group}
    grid = raw.get("grid", {})
    named = {raw.get("problem"), *grid.get("optimizer", []), *grid.get("problem", [])}
    return bool(names & named)


def toml_problems(block: str) -> list[str]:
    """Every key of a TOML block is a setting, a grid axis, a variant's type and hyperparameters, or extra seeds;
    a block with a grid is a whole experiment, checked by the same validation as a sweep."""
    try:
        raw = tomllib.loads(block)
    except tomllib.TOMLDecodeError as error:
        return [f"not TOML: {error}"]
    if {"project", "build-system", "tool"} & raw.keys():
        return []  # a plugin package's pyproject.toml, not an experiment file
    problems = []
    for key, value in raw.items():
        if key == "grid":
            problems += [f"grid.{axis} is not a grid axis" for axis in value if axis not in axis_names()]
        elif key == "optimizers":
            for name, variant in value.items():
                kind = variant.get("type")
                if isinstance(kind, str) and ":" in kind:
                    continue  # a plugin's import path: its hyperparameters are its constructor's
                if kind not in OPTIMIZERS:
                    problems.append(f"optimizers.{name}: type {kind!r} is not in the catalogue")
                    continue
                problems += [
                    f"optimizers.{name}: {kind} has no hyperparameter {hyperparameter}"
                    for hyperparameter in variant
                    if hyperparameter != "type" and hyperparameter not in OPTIMIZERS[kind][2]
                ]
        elif key not in ("extra_seeds", "problem_settings") and key not in DEFAULTS:
            problems.append(f"{key} is not a setting")
    if "grid" in raw and not problems and not names_example_entry_points(raw):
        try:
            with example_plugin_importable():
                validate(raw, "a TOML block of the docs")
        except ConfigError as error:
            problems.append(str(error))
    return problems


def documents_problems(documents: dict[str, str]) -> list[str]:
    targets = make_targets()
    problems = []
    for name, text in documents.items():
        for code in code_of(text):
            problems += [f"{name}: {problem}" for words in command_lines(code) for problem in command_problems(words)]
            problems += [f"{name}: {problem}" for problem in make_problems(code, targets)]
            problems += [f"{name}: {problem}" for problem in lone_option_problems(code)]
        for block in toml_blocks(text):
            problems += [f"{name}: toml: {problem}" for problem in toml_problems(block)]
    return problems


def read_documents() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text() for path in DOCUMENTS}


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the documents as they are ------------------------------------------------------------------------------------


def test_every_command_option_make_target_and_setting_shown_exists():
    assert documents_problems(read_documents()) == []


def test_the_documents_show_commands_to_check():
    """The parser finds what it is meant to check: a check that finds nothing passes for the wrong reason."""
    documents = read_documents()
    shown = {
        " ".join(words[:1]) for text in documents.values() for code in code_of(text) for words in command_lines(code)
    }
    assert set(cli.commands) <= shown  # every command appears somewhere, and is checked there
    readme = [words for code in code_of(documents["README.md"]) for words in command_lines(code)]
    assert ["compare"] in readme and ["plot", "--out", "curves.png"] in readme
    assert sum(len(toml_blocks(text)) for text in documents.values()) >= 4
    assert {"sweep", "test"} <= set(MAKE.findall(documents["README.md"]))


def test_the_settings_table_lists_every_setting_with_its_default():
    text = (ROOT / "docs" / "experiment-files.md").read_text()
    hooks = load_hooks()
    assert set(hooks.settings_rows(text)) == set(DEFAULTS)
    hooks.check_settings_table(text)


def test_the_optimizer_table_has_every_optimizer():
    table = load_hooks().optimizer_table()
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == list(OPTIMIZERS)


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


# -- each check fails on a made-up name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        ("tinytrain compare --made-up-option 3", "compare has no option --made-up-option"),
        ("$ tinytrain frobnicate --x", "no command 'frobnicate'"),
        ("tinytrain sweep --set made_up_setting=1", "made_up_setting: unknown key"),
        (".venv/bin/tinytrain plot --out a.png --tracking-uri=x --colour red", "plot has no option --colour"),
        ("make sweep && tinytrain reproduce RUN_ID --fast  # a comment", "reproduce has no option --fast"),
        ("make frobnicate", "make frobnicate: no such target"),
    ],
)
def test_a_made_up_command_option_or_target_fails(code, expected):
    problems = documents_problems({"made-up.md": f"```sh\n{code}\n```\n"})
    assert any(expected in problem for problem in problems), problems
    inline = documents_problems({"made-up.md": f"Run `{code}` and see.\n"})
    assert any(expected in problem for problem in inline), inline


def test_a_made_up_option_shown_on_its_own_fails():
    problems = documents_problems({"made-up.md": "Add `--until-separated` or `--until-converged=yes` to a sweep.\n"})
    assert problems == ["made-up.md: --until-converged: no tinytrain command has this option"]


@pytest.mark.parametrize(
    "block, expected",
    [
        ('name = "x"\nmade_up_setting = 3\n', "made_up_setting is not a setting"),
        ('[grid]\noptimizer = ["adam"]\nwidth = [1]\n', "grid.width is not a grid axis"),
        ('[optimizers.fast]\ntype = "adam"\nmomentum = 0.9\n', "adam has no hyperparameter momentum"),
        ('[optimizers.fast]\ntype = "adamx"\n', "type 'adamx' is not in the catalogue"),
        ('steps = 0\n[grid]\noptimizer = ["adam"]\n', "steps must be an integer >= 1"),
    ],
)
def test_a_made_up_setting_in_a_toml_block_fails(block, expected):
    problems = documents_problems({"made-up.md": f"```toml\n{block}```\n"})
    assert any(expected in problem for problem in problems), problems


def test_a_settings_table_with_a_made_up_setting_or_default_fails():
    hooks = load_hooks()
    text = (ROOT / "docs" / "experiment-files.md").read_text()
    made_up = text.replace("| `steps` | `100` |", "| `steps` | `100` |\n| `width` | `4` | made up |")
    with pytest.raises(ValueError, match="width"):
        hooks.check_settings_table(made_up)
    wrong_default = text.replace("| `steps` | `100` |", "| `steps` | `200` |")
    with pytest.raises(ValueError, match="steps"):
        hooks.check_settings_table(wrong_default)
    missing = "\n".join(line for line in text.splitlines() if not line.startswith("| `mkldnn`"))
    with pytest.raises(ValueError, match="mkldnn"):
        hooks.check_settings_table(missing)
