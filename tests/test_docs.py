"""The user documentation keeps up with the command line: README tour, docs reference, sizes, links."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgeresnet.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference.md"


def _commands(group: click.Group = cli, prefix: str = "edgeresnet"):
    """Every (path, command) under the CLI, subgroups included."""
    ctx = click.Context(group, info_name=prefix)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


COMMANDS = list(_commands())
IDS = [path for path, _ in COMMANDS]


def _options(cmd: click.Command) -> list[str]:
    """Every option string of a command (both halves of --x/--no-x), without --help."""
    names = []
    for p in cmd.params:
        if isinstance(p, click.Option):
            names += [o for o in (*p.opts, *p.secondary_opts) if o not in ("--help", "-h")]
    return names


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _section(text: str, heading: str) -> str:
    """The text from the Markdown heading that starts with ``heading`` to the next heading of its level."""
    lines, start, level, fenced = text.splitlines(), None, 0, False
    for n, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#+) (.*)", line)
        if m and start is None and m.group(2).startswith(heading):
            start, level = n + 1, len(m.group(1))
        elif m and start is not None and len(m.group(1)) <= level:
            return "\n".join(lines[start:n])
    assert start is not None, f"no heading {heading!r}"
    return "\n".join(lines[start:])


def _prose(text: str):
    """(line number, line) outside fenced code blocks and tables."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced and not line.lstrip().startswith("|"):
            yield n, line


def test_the_cli_has_commands_to_check():
    assert {"convert", "report", "models", "inspect", "bench", "predict", "eval"} <= {p.split()[-1] for p in IDS}


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_every_command_has_help_text(path, cmd):
    assert (cmd.help or "").strip() and cmd.get_short_help_str().strip(), f"{path} has no help text"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden and "--help" not in p.opts:
            assert (p.help or "").strip(), f"{path} {p.opts[0]} has no help text"


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_every_command_is_in_the_readme_tour(path, cmd):
    tour = _section(README.read_text(), "A tour of the commands")
    assert f"`{path}`" in tour, f"README's tour does not show `{path}`"


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_every_option_is_in_the_docs_reference(path, cmd):
    section = _section(REFERENCE.read_text(), f"`{path}`")
    missing = [o for o in _options(cmd) if not _mentions(section, o)]
    assert not missing, f"docs/reference.md, section `{path}`, does not mention {missing}"


def test_the_top_level_options_are_in_the_docs_reference():
    text = REFERENCE.read_text()
    missing = [o for o in _options(cli) if not _mentions(text, o)]
    assert not missing, f"docs/reference.md does not mention {missing}"


def test_the_readme_stays_short_and_wrapped():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    long = [(n, len(line)) for n, line in _prose(text) if len(line) > 120]
    assert not long, f"README lines over 120 characters (line, length): {long}"


def test_the_readme_keeps_the_fresh_machine_commands_and_the_test_data_note():
    text = README.read_text()
    assert 'pip install -e ".[host]" && edgeresnet convert --int8\n' in text
    assert 'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadfile\n' in text
    assert "../shared/data" in text and "EDGERESNET_TEST_DATA" in text and "skipped" in text
    assert '-m "not slow"' in text


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_user_docs_carry_no_issue_numbers_or_load_averages(page):
    text = page.read_text()
    assert not re.search(r"(?<![\w&])#\d+\b|\bissue\b", text, re.I), f"{page.name} names an issue"
    assert "load average" not in text, f"{page.name} reports a load average (measurements go to benchmarks/RESULTS.md)"


def test_readme_links_into_docs_resolve():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def _tree_block(text: str, after: str) -> set:
    """The first names of the lines of the first code block after ``after``."""
    block = text.split(after, 1)[1].split("```", 2)[1]
    return {line.split()[0].rstrip("/") for line in block.splitlines()[1:] if line.strip()}


def test_architecture_page_shows_the_tree_ls_shows():
    text = (DOCS / "architecture.md").read_text()
    assert text.startswith("# Architecture")
    package = ROOT / "edgeresnet"
    folders = {"edgeresnet"} | {
        str(p.relative_to(ROOT)) for p in package.rglob("*")
        if p.is_dir() and "__pycache__" not in p.parts and "_resources" not in p.parts
    }
    assert _tree_block(text, "## The tree") == folders
    beside = {p.name for p in ROOT.iterdir()
              if p.is_dir() and not p.name.startswith(".") and p.name not in ("edgeresnet", "site")
              and not p.name.endswith(".egg-info")}
    assert _tree_block(text, "Beside the package:") == beside


def _subclasses(cls):
    return {cls} | {s for sub in cls.__subclasses__() for s in _subclasses(sub)}


def test_exit_code_table_has_one_row_per_code_the_command_returns():
    import signal

    from edgeresnet import errors

    section = _section((DOCS / "safety.md").read_text(), "Exit codes")
    rows = {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE)}
    assert len(rows) == len(re.findall(r"^\| \d+ \|", section, re.MULTILINE)), "a code has two rows"
    defined = errors.exit_codes()
    assert sorted(rows) == sorted(set(defined.values()))
    assert {cls.exit_code for cls in _subclasses(errors.EdgeResNetError)} <= set(rows)
    # Each row says what its code is for.
    for name, words in {"EXIT_INTERNAL": "internal error", "EXIT_USAGE": "bad input", "EXIT_FAILED": "--max-drop",
                        "EXIT_INCOMPATIBLE": "inspect --strict", "EXIT_DEVICE_CHECK": "--device-check",
                        "EXIT_SIGINT": "Ctrl-C", "EXIT_SIGTERM": "SIGTERM"}.items():
        assert words in rows[defined[name]], (name, rows[defined[name]])
    assert errors.ConversionError.exit_code == errors.DriftBudgetExceeded.exit_code == defined["EXIT_FAILED"]
    assert defined["EXIT_SIGINT"] == 128 + signal.SIGINT and defined["EXIT_SIGTERM"] == 128 + signal.SIGTERM
    # The command names its codes; a bare number there would escape this table.
    source = "\n".join(p.read_text() for p in sorted((ROOT / "edgeresnet" / "cli").glob("*.py")))
    assert not re.search(r"_fail\([^\n]*, \d+\)|sys\.exit\(\d+\)|_exit\(\d+\)", source)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_the_docs_build_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- benchmarks/_results.py


@pytest.fixture()
def results_module():
    spec = importlib.util.spec_from_file_location("_results", ROOT / "benchmarks" / "_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_section_has_date_machine_command_and_table(results_module, tmp_path):
    path = tmp_path / "RESULTS.md"
    results_module.append_section("bench.py (a title)", "python bench.py --results", "a | b\n1 | 2\n", path)
    results_module.append_section("bench.py (again)", "python bench.py --results", "x\n", path)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n") and text.count("# Benchmark results") == 1
    assert re.search(r"^## \d{4}-\d\d-\d\d \d\d:\d\d UTC: bench\.py \(a title\)$", text, re.M)
    assert f"{shutil.os.cpu_count()} cores" in text and "GiB memory" in text
    assert "- command: `python bench.py --results`" in text
    assert "```text\na | b\n1 | 2\n```" in text


def test_results_flag_records_only_with_the_flag(results_module, tmp_path, monkeypatch, capsys):
    path = tmp_path / "RESULTS.md"

    def main():
        print("the table", sys.argv[1:])

    monkeypatch.setattr(sys, "argv", ["benchmarks/fake.py", "--n", "3"])
    assert results_module.run(main, path=path) == 0
    assert not path.exists()
    monkeypatch.setattr(sys, "argv", ["benchmarks/fake.py", "--n", "3", "--results"])
    assert results_module.run(main, path=path) == 0
    text = path.read_text()
    assert "the table ['--n', '3']" in text  # the script never sees --results
    assert "fake.py --n 3 --results`" in text
    assert "the table" in capsys.readouterr().out  # still printed as usual
