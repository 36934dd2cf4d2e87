"""Every figure in the docs can be reproduced: each benchmark section names the command that
produced it, and every command the docs name exists.

A "section" is a markdown heading and the text up to the next heading; one that holds a table
holds figures, and it must name a command in its own text or in a heading above it: a `make
<target>` the Makefile defines, or a script under bench/ (``bench/<name>.py``) that exists. No
data and no daemon needed: this reads the docs, the Makefile and the file tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: The pages whose figures are benchmarks: each of their sections with a table names a command.
BENCHMARK_PAGES = ("docs/benchmarks.md", "docs/quality.md")
#: Pages and files that name commands (each named one must exist) and must not cite issue numbers.
COMMAND_PAGES = (*BENCHMARK_PAGES, "docs/benchmarks-history.md", "README.md", "docs/operations.md")

SCRIPT = re.compile(r"\bbench/([\w-]+\.py)\b")
MAKE = re.compile(r"`make ([\w-]+)")
ISSUE_WORD = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
ISSUE_NUMBER = re.compile(r"\bissues? #?\d+|\bissue #\d+|#\d{1,4}\b", re.IGNORECASE)


@dataclass
class Section:
    page: str
    line: int
    title: str
    #: the headings above it but the page title, outermost first, with their own text (before their
    #: first subsection)
    ancestors: list[str]
    text: str

    @property
    def holds_figures(self) -> bool:
        return any(line.startswith("|") for line in self.text.splitlines())


def sections(page: str) -> list[Section]:
    """The page's sections, each with its headings' chain."""
    found: list[Section] = []
    chain: list[tuple[int, str]] = []  # (level, heading + own text)
    current: Section | None = None
    fenced = False
    for number, line in enumerate((REPO / page).read_text().splitlines(), 1):
        fenced ^= line.startswith("```")
        heading = re.match(r"(#+) ", line) if not fenced else None
        if heading:
            level = len(heading.group(1))
            while chain and chain[-1][0] >= level:
                chain.pop()
            # The page's title (level 1) does not count: its intro speaks for the page, not a table.
            ancestors = [text for lvl, text in chain if lvl > 1]
            current = Section(page, number, line, ancestors, line + "\n")
            chain.append((level, line + "\n"))
            found.append(current)
        elif current is not None:
            current.text += line + "\n"
            chain[-1] = (chain[-1][0], chain[-1][1] + line + "\n")
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))


def names_a_command(text: str) -> bool:
    return bool(SCRIPT.search(text) or MAKE.search(text))


def figure_sections() -> list[Section]:
    return [s for page in BENCHMARK_PAGES for s in sections(page) if s.holds_figures]


@pytest.mark.parametrize("section", figure_sections(), ids=lambda s: f"{s.page}:{s.line}")
def test_every_benchmark_section_names_the_command_behind_its_figures(section: Section):
    named = names_a_command(section.text) or any(names_a_command(a) for a in section.ancestors)
    assert named, (
        f"{section.page}:{section.line} {section.title!r} holds figures but names no command "
        "(`make <target>` or bench/<script>.py) in its text or in a heading above it"
    )


@pytest.mark.parametrize("page", COMMAND_PAGES)
def test_every_command_the_docs_name_exists(page: str):
    text = (REPO / page).read_text()
    missing = sorted({s for s in SCRIPT.findall(text) if not (REPO / "bench" / s).is_file()})
    unknown = sorted(set(MAKE.findall(text)) - make_targets())
    assert not missing and not unknown, f"{page}: no bench/{missing}; no make target {unknown}"


def test_the_docs_and_benchmark_scripts_cite_no_issue_numbers():
    """Describe the change instead: an issue number means nothing to a reader of the docs."""
    files = [
        *sorted((REPO / "docs").glob("*.md")),
        REPO / "README.md",
        *sorted((REPO / "bench").glob("*.md")),
        *sorted((REPO / "bench").glob("*.py")),
    ]
    code = sorted((REPO / "same_search").rglob("*.py"))
    cited = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in [*files, *code]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        # The package's own code holds colours like "#777": there only the word counts.
        if (ISSUE_WORD if path in code else ISSUE_NUMBER).search(line)
    ]
    assert not cited, "\n".join(cited)


def test_the_checks_find_what_they_look_for():
    """The checks above are not vacuous: the pages have sections with figures, and a section
    without a command or a missing script would be caught."""
    assert len(figure_sections()) >= 20
    assert not names_a_command("| a | table |\n") and names_a_command("`make eval-same-picture`")
    assert names_a_command("(`.venv/bin/python bench/check_import_100k.py --photos ../shared/data`)")
    assert "no_such_script.py" in SCRIPT.findall("run bench/no_such_script.py")
    assert {"test", "bench", "eval-same-picture"} <= make_targets()
    assert ISSUE_NUMBER.search("the targets of issue 13") and not ISSUE_NUMBER.search("issue's targets")
