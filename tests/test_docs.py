"""The README's and docs' snippets still match the code: commands, scripts, links.

Nothing here trains or decodes: every ``dynapp`` command line of a ``bash`` block (and every
``$ dynapp`` line of a ``console`` block) is parsed by the real command's option parser without
running it, every script a snippet runs must exist, and every relative link must point to an
existing file (and heading).  The checker functions take text, so the tests below also feed them
broken snippets and check that each kind of mistake is caught.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from dynapp.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GROUP = typer.main.get_command(app)

# The two commands of the README that .ci/run and a fresh clone rely on, verbatim.
CONTRACT = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/dynapp demo",
    ".venv/bin/python -m pytest -q",
)
# Sentences about how the documentation was written, which mean nothing to a user.
DEVELOPMENT_LOG = ("other helpers", "helpers' jobs", "the session", "lack of time", "other sessions",
                   "subagent", "not rerun", "before the refactor", "NOTES.md")

_FENCE = re.compile(r"^[ \t]*```(\S*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_INLINE = re.compile(r"`([^`\n]+)`")
_SCRIPT = re.compile(r"^(?:benchmarks|tools|configs)/[\w./-]+$")
_SEPARATORS = {";", "&", "&&", "|", "||", "(", ")"}
_REDIRECTS = {">", ">>", "<", "2>", "&>"}
_SHELL_WORDS = {"do", "then", "else", "time", "exec"}


def code_blocks(text: str, languages: tuple[str, ...]) -> list[str]:
    """The bodies of the fenced blocks of ``text`` in one of ``languages``."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1) in languages]


def shell_lines(text: str) -> list[str]:
    """The command lines of the bash blocks and the ``$ ...`` lines of the console blocks,
    continuation lines joined (blocks inside list items are indented)."""
    lines = []
    for block in code_blocks(text, ("bash", "sh", "shell")):
        lines += [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    for block in code_blocks(text, ("console",)):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip()[2:] for line in joined.splitlines() if line.strip().startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command of a shell line (split at ; & && | ||, comments and
    redirections dropped; ``$VAR`` becomes 0 so that a number option still parses)."""
    lexer = shlex.shlex(re.sub(r"\$\{?\w+\}?", "0", line), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words, skip = [], [], False
    for token in lexer:
        if token in _SEPARATORS:
            commands.append(words)
            words, skip = [], False
        elif token in _REDIRECTS:
            skip = True  # the next word is the redirection's target
        elif skip:
            skip = False
        else:
            words.append(token)
    commands.append(words)
    result = []
    for words in commands:
        while words and (words[0] in _SHELL_WORDS or re.match(r"^\w+=", words[0])):
            words = words[1:]  # `do`, `then`, environment assignments
        if words:
            result.append(words)
    return result


def dynapp_invocations(words: list[str]) -> list[list[str]]:
    """``[command, args...]`` for a ``dynapp`` call in ``words``: ``dynapp X``, ``.venv/bin/dynapp X``
    or ``-m dynapp.cli X`` (python, torchrun)."""
    for i, word in enumerate(words):
        if Path(word).name == "dynapp" or (word == "dynapp.cli" and i > 0 and words[i - 1] == "-m"):
            return [words[i + 1:]]
    return []


def check_dynapp_call(args: list[str]) -> str | None:
    """None if ``dynapp *args`` names a real command whose parser accepts ``args``; else why not."""
    if not args:
        return "dynapp without a command"
    if args[0] in ("--help", "-h"):
        return None
    command = GROUP.commands.get(args[0])
    if command is None:
        return f"no command {args[0]!r} (dynapp has {', '.join(sorted(GROUP.commands))})"
    if "--help" in args[1:]:
        return None
    try:
        with command.make_context(args[0], list(args[1:]), resilient_parsing=False) as ctx:
            params = dict(ctx.params)
    except Exception as err:  # click's (or typer's own copy of click's) usage errors
        if hasattr(err, "format_message"):
            return f"dynapp {args[0]}: {err.format_message()}"
        if type(err).__name__ == "Exit":
            return None
        raise
    if args[0] in ("train", "config"):  # the key=value overrides name real keys with valid values
        from dynapp.config import ConfigError, load_config

        path = params.get("config")
        path = ROOT / path if path and (ROOT / path).is_file() else None  # not a file of the repository
        try:
            load_config(path, params.get("overrides") or [])
        except ConfigError as err:
            return f"dynapp {args[0]}: {err}"
    return None


def check_shell(text: str, root: Path = ROOT) -> list[str]:
    """Problems of the shell snippets of ``text``: bad ``dynapp`` calls, missing scripts."""
    problems = []
    for line in shell_lines(text):
        for words in simple_commands(line):
            for call in dynapp_invocations(words):
                why = check_dynapp_call(call)
                if why:
                    problems.append(f"{why}\n    in: {line.strip()}")
            for word in words:
                if _SCRIPT.match(word) and "<" not in word and not (root / word).exists():
                    problems.append(f"{word} does not exist\n    in: {line.strip()}")
    return problems


def check_inline_commands(text: str) -> list[str]:
    """``dynapp X`` in inline code names a real command."""
    problems = []
    for span in _INLINE.findall(text):
        m = re.match(r"^(?:\.venv/bin/)?dynapp ([a-z][\w-]*)", span)
        if m and m.group(1) not in GROUP.commands:
            problems.append(f"no command {m.group(1)!r} in `{span}`")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of the headings of a markdown text (outside code blocks), duplicates numbered."""
    text = _FENCE.sub("", text)
    seen: dict[str, int] = {}
    result = set()
    for m in re.finditer(r"^#{1,6} +(.+?)\s*#*$", text, re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def check_links(text: str, path: Path) -> list[str]:
    """Relative links of ``text`` (the file at ``path``) that point to no file or no heading."""
    problems = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: link to {target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{path.name}: link to {target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shell_snippets_name_real_commands_and_files(doc):
    text = doc.read_text()
    assert check_shell(text) + check_inline_commands(text) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files_and_headings(doc):
    assert check_links(doc.read_text(), doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_development_log(doc):
    text = doc.read_text().lower()
    assert [p for p in DEVELOPMENT_LOG if p.lower() in text] == []


def test_readme_is_one_screen_and_keeps_the_contract_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    blocks = code_blocks(text, ("bash",))
    for command in CONTRACT:
        assert any(command in block.splitlines() for block in blocks), command


def test_every_command_help_parses():
    runner = CliRunner()
    for name in ["--help", *(f"{c} --help" for c in GROUP.commands)]:
        result = runner.invoke(app, name.split())
        assert result.exit_code == 0, (name, result.output)


def test_the_checks_catch_broken_snippets(tmp_path):
    bad = """
```bash
dynapp trian data.root=x                      # a misspelt command
.venv/bin/dynapp demo --seeds two             # not a number
dynapp predict clip.mp4 --checkpoint a.pt --no-such-option
torchrun --nproc_per_node 2 -m dynapp.cli evaluate --checkpoint a.pt
dynapp train data.dataset=folder optim.lrr=0.1   # no such key
.venv/bin/python benchmarks/bench_nothing.py
for s in 0 1; do .venv/bin/dynapp demo --seed $s --out runs/s$s & done
```

```console
$ dynapp export --checkpoint a.pt --format onnx --out m.onnx --bogus 1
```

Run `dynapp fly` to see [the data](nowhere.md), [a heading](README.md#no-such-heading).
"""
    problems = check_shell(bad)
    assert len(problems) == 7, problems
    assert "no command 'trian'" in problems[0]
    assert "two" in problems[1]
    assert "--no-such-option" in problems[2]
    assert "no command 'evaluate'" in problems[3]
    assert "optim.lrr" in problems[4]
    assert "bench_nothing.py does not exist" in problems[5]
    assert "--bogus" in problems[6]
    assert check_inline_commands(bad) == ["no command 'fly' in `dynapp fly`"]
    (tmp_path / "README.md").write_text("# Title\n\n## A `code` heading: here\n")
    links = check_links(bad, tmp_path / "page.md")
    assert len(links) == 2 and "nowhere.md" in links[0] and "#no-such-heading" in links[1]
    good = "[ok](README.md#a-code-heading-here) [top](README.md#title)"
    assert check_links(good, tmp_path / "page.md") == []


def test_the_shell_splitter():
    assert simple_commands("A=1 .venv/bin/dynapp demo --seed $s > out.txt; echo ${s}") == [
        [".venv/bin/dynapp", "demo", "--seed", "0"], ["echo", "0"]]
    assert simple_commands("for s in 0 1; do dynapp demo --seed $s & done  # c") == [
        ["for", "s", "in", "0", "1"], ["dynapp", "demo", "--seed", "0"], ["done"]]
