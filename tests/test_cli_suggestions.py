"""Every command line greencam suggests (``--help`` examples, error messages, the README's `greencam ...`)
parses: no suggestion leads a user into ``No such option``.

Parsing goes through click's own ``make_context`` on the real command tree (types, choices, unknown
options, missing values), without running the command.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from greenscreen_cam.cli import app

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "greenscreen_cam"
# typer carries its own copy of click: its usage errors are the bases of typer.BadParameter
USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
OPTION = re.compile(r"^--?[a-z][a-z0-9-]*$")
# a value a user would type (a number, a path, a URL, a box, a placeholder), not a word of prose
VALUE = re.compile(r"^(\{X\}|[A-Z][A-Z_]+|\$[A-Z_]+|.*[0-9./:,=].*)$")


def _tree() -> Any:
    root = typer.main.get_command(app)
    assert _is_group(root)
    return root


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "commands")


def _leaf(tokens: list[str]) -> tuple[Any, list[str], list[str]] | None:
    """``(command, its path, the rest)`` for ``greencam <tokens>``, or None when no subcommand starts it."""
    cmd = _tree()
    path: list[str] = []
    while _is_group(cmd) and tokens and tokens[0] in cmd.commands:
        path.append(tokens[0])
        cmd = cmd.commands[tokens.pop(0)]
    if not path or _is_group(cmd):
        return None
    return cmd, path, tokens


def _takes_value(cmd: Any, token: str) -> bool | None:
    """True/False for an option of ``cmd`` (with/without a value), None for an unknown one."""
    for param in cmd.params:
        if param.param_type_name == "option" and token in (*param.opts, *param.secondary_opts):
            return not param.is_flag and not param.count
    return None


def _choices(cmd: Any) -> set[str]:
    return {
        str(c)
        for p in cmd.params
        if p.param_type_name == "argument"
        for c in (getattr(p.type_descriptor, "choices", None) or ())
    }


def _command_in(prose: str) -> list[str] | None:
    """The command line that ``prose`` suggests after its "greencam": subcommands, then options with their
    values and positional values, up to the first word of prose. Unknown options are kept (they must fail)."""
    words = prose.split()
    found = _leaf(list(words))
    if found is None:
        return None
    cmd, path, rest = found
    args: list[str] = []
    has_positional = any(p.param_type_name == "argument" for p in cmd.params)
    while rest:
        raw = rest.pop(0)
        word = raw.rstrip(".,;:)")
        ended = word != raw  # "... --write)" or "... again." ends the command
        if OPTION.match(word):
            args.append(word)
            if not ended and _takes_value(cmd, word) and rest:
                raw = rest.pop(0)
                args.append(raw.rstrip(".,;:)"))
                ended = args[-1] != raw
        elif has_positional and (VALUE.match(word) or word in _choices(cmd)):
            args.append(word)
        else:
            break
        if ended:
            break
    if not args and any(p.required for p in cmd.params):
        return None  # "greencam ctl talks to this camera": the command named in prose, not a line to run
    return [*path, *args]


def _text(node: ast.AST) -> str | None:
    """A string literal, an f-string (each ``{...}`` becomes the placeholder ``{X}``) or a ``+`` of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{X}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        return left + right if left is not None and right is not None else None
    return None


def _message_suggestions() -> set[tuple[str, tuple[str, ...]]]:
    """``(where, argv)`` for each command line in an error or a message greencam prints."""
    found: set[tuple[str, tuple[str, ...]]] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if not re.search(r"Error|fail|print|emit|warn|say|echo", name):
                continue
            for arg in node.args:
                text = _text(arg)
                for match in re.finditer(r"\bgreencam ([^\"'`\n]+)", text or ""):
                    argv = _command_in(match.group(1))
                    if argv:
                        found.add((f"{path.relative_to(ROOT)}: {name}", tuple(argv)))
    return found


def _help_examples() -> set[tuple[str, tuple[str, ...]]]:
    """``(where, argv)`` for each example line under a command's ``--help``."""
    found: set[tuple[str, tuple[str, ...]]] = set()

    def walk(cmd: Any, path: list[str]) -> None:
        for text in (cmd.epilog or "", cmd.help or ""):
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("greencam "):
                    for part in re.split(
                        r"\s{2,}then\s{2,}", line
                    ):  # "greencam download tiny  then  greencam start ..."
                        found.add((f"greencam {' '.join(path)} --help", tuple(_shell_words(part))))
        if _is_group(cmd):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(_tree(), [])
    return found


def _readme_examples() -> set[tuple[str, tuple[str, ...]]]:
    """``(where, argv)`` for each `greencam ...` line of the README's code blocks."""
    found: set[tuple[str, tuple[str, ...]]] = set()
    in_code = False
    for n, line in enumerate((ROOT / "README.md").read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        stripped = re.sub(r"^[A-Z_]+=\S+\s+", "", line.strip())  # GREENCAM_X=... greencam ...
        if in_code and stripped.startswith("greencam "):
            found.add((f"README.md:{n}", tuple(_shell_words(stripped))))
    return found


def _shell_words(line: str) -> list[str]:
    """The argv of one shell example line, without ``greencam``, comments, redirections and pipes."""
    words = shlex.split(line, comments=True)
    for stop in (">", "|", "&&", ";", "&", "2>&1"):
        if stop in words:
            words = words[: words.index(stop)]
    return [w for w in words[1:] if not w.startswith(">")]


def _parse(argv: tuple[str, ...]) -> None:
    found = _leaf(list(argv))
    assert found is not None, f"greencam {' '.join(argv)}: no such command"
    cmd, path, rest = found
    with cmd.make_context(" ".join(["greencam", *path]), list(rest)):
        pass


def _failures(suggestions: set[tuple[str, tuple[str, ...]]]) -> list[str]:
    failed = []
    for where, argv in sorted(suggestions):
        try:
            _parse(argv)
        except (USAGE_ERROR, AssertionError) as e:
            failed.append(f"{where}: greencam {' '.join(argv)} -> {e}")
    return failed


def test_every_help_example_parses():
    examples = _help_examples()
    assert len(examples) >= 30  # the walk really found the examples
    assert ("greencam config --help", ("config", "--write")) in examples
    assert not _failures(examples)


def test_every_command_an_error_message_suggests_parses():
    suggestions = _message_suggestions()
    argvs = {argv for _, argv in suggestions}
    # the service's "write it first with greencam config --write" and the checkpoint hint are among them
    assert ("config", "--write") in argvs
    assert any(argv[:1] == ("download",) for argv in argvs)
    assert not _failures(suggestions)


def test_every_readme_command_parses():
    examples = _readme_examples()
    assert len(examples) >= 20
    assert not _failures(examples)


def test_a_wrong_suggestion_is_caught():
    """The check is not vacuous: the dead end that issue 27 found fails it (greencam config had no --write)."""
    assert _command_in("config --wrong-flag writes one)") == ["config", "--wrong-flag"]
    assert _failures({("here", ("config", "--wrong-flag"))})
    assert _failures({("here", ("start", "--bbox"))})  # a missing value
    assert _command_in("download again") == ["download"]  # prose after a command is not an argument
    assert _command_in("is already running") is None
    assert _command_in("ctl talks to this camera") is None  # a command named in prose


def test_flags_show_no_metavar_in_help():
    runner = CliRunner()
    for argv in (["--help"], ["config", "--help"], ["start", "--help"], ["serve", "--help"], ["devices", "--help"]):
        result = runner.invoke(app, argv, terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, argv
    assert "<path>" in runner.invoke(app, ["config", "--help"], terminal_width=200).output  # values keep theirs


@pytest.mark.parametrize("exists", [False, True])
def test_service_install_s_advice_works_when_run(tmp_path, monkeypatch, exists):
    """``service install --dry-run`` without a config says to run ``greencam config --write``: running it
    writes the file that the next ``service install --dry-run`` reads; a second write refuses to replace it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    runner = CliRunner()
    first = runner.invoke(app, ["service", "install", "--dry-run"])
    if first.exit_code == 0:
        pytest.skip("service install --dry-run found a config already")
    advice = re.search(r"greencam (config [^);\n]*)", first.output)
    assert advice, first.output
    argv = shlex.split(advice.group(1))
    target = tmp_path / "cfg" / "greencam" / "config.toml"
    if exists:
        target.parent.mkdir(parents=True)
        target.write_text('source = "2"\n')
        refused = runner.invoke(app, argv)
        assert refused.exit_code != 0 and "--overwrite" in refused.output
        assert target.read_text() == 'source = "2"\n'  # never destroy a user's file
        assert runner.invoke(app, [*argv, "--overwrite"]).exit_code == 0
    else:
        assert runner.invoke(app, argv).exit_code == 0
    assert "# source = " in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["config.toml"]  # no temp file left
    shown = runner.invoke(app, ["config", "--json"])
    assert shown.exit_code == 0 and '"source": "0"' in shown.output  # a starter file changes nothing
    second = runner.invoke(app, ["service", "install", "--dry-run"])
    assert second.exit_code == 0, second.output
    assert str(target) in second.output
