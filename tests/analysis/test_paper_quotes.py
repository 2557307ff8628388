"""The report's paper column quotes the paper: every cell is found verbatim in the paper's text."""

import re
from pathlib import Path

import pytest

from analysis import paper
from analysis.paper import Quote
from analysis.report import analyze
from tests.analysis.test_analysis import _layers_row, _metrics_row, _write

PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "are-neural-nets-modular.md"
LATEX = {r"\beta": "β", r"\alpha": "α", r"\pm": "±", r"\%": "%", r"\_": "_", "{": "", "}": "", "$": "",
         "“": '"', "”": '"', "‘": "'", "’": "'"}


def _plain(text: str) -> str:
    """The paper's markdown as a reader sees it: LaTeX written plainly, straight quotes, one space."""
    for latex, plain in LATEX.items():
        text = text.replace(latex, plain)
    return " ".join(text.split())


@pytest.fixture(scope="module")
def paper_text() -> str:
    if not PAPER.exists():
        pytest.skip(f"the paper's text is not at {PAPER} (../shared/paper beside the repository)")
    return _plain(PAPER.read_text())


def _source_in_paper(source: str, text: str) -> bool:
    """'Fig. 8' -> a 'Figure 8:' caption, 'Sec. 3.3' / 'App. C.3' -> that heading, 'Table 1' -> its caption."""
    kind, number = re.match(r"(Fig\.|Sec\.|App\.|Table) ([\w.]+)", source).groups()
    pattern = {"Fig.": rf"Figure {number[:2].rstrip('abcdefgh')}:", "Table": rf"Table {number}:",
               "Sec.": rf"#+ {re.escape(number)} [A-Z]", "App.": rf"#+ {re.escape(number)} [A-Z]"}[kind]
    return re.search(pattern, text) is not None


def _quotes() -> list[Quote]:
    return [value for value in vars(paper).values() if isinstance(value, Quote)]


@pytest.mark.parametrize("quote", _quotes(), ids=lambda q: q.text[:40])
def test_every_quote_is_in_the_paper_with_its_source(quote, paper_text):
    assert _plain(quote.text) in paper_text, f"not in the paper: {quote.text!r}"
    assert _source_in_paper(quote.source, paper_text), f"no {quote.source} in the paper"


def test_the_known_misquotes_are_gone(paper_text):
    texts = [q.text for q in _quotes()]
    assert not any("a new permutation needs its own first layer" in t for t in texts)  # not in the paper (Fig. 3)
    assert not any("still falls" in t for t in texts)  # App. C.3 says "still changes"
    assert "sharing still falls" not in paper_text and "still changes" in paper_text


def _paper_cells(report: str) -> list[str]:
    """The third column of every figure table in report.md (header and rule rows left out)."""
    cells, in_figure_table = [], False
    for line in report.splitlines():
        if line.startswith("| quantity | measured | paper"):
            in_figure_table = True
        elif not line.startswith("|"):
            in_figure_table = False
        elif in_figure_table and not line.startswith("|---"):
            cells.append([c.strip() for c in line.strip("|").split(" | ")][2])
    return cells


def test_every_paper_cell_of_a_report_is_a_quote_from_the_paper_or_empty(tmp_path, paper_text):
    rows = [_layers_row(f"t{i}", i % 2, size, 1e-4, mask, layer, 100, kept, kept // 2)
            for i, size in enumerate(["small", "small", "big", "big"])
            for mask, kept in (("add", 40), ("mul", 80)) for layer in ("layers.0", "all")]
    _write(tmp_path, "layers", rows)
    _write(tmp_path, "metrics", [_metrics_row(f"t{i}", i % 2, size, 1e-4, mask, sub, 0.9)
                                 for i, size in enumerate(["small", "small", "big", "big"])
                                 for mask in ("none", "add", "mul", "not-add", "not-mul") for sub in ("add", "mul")])
    report, _ = analyze([tmp_path], tmp_path / "out")
    cells = _paper_cells(report.read_text())
    assert len(cells) > 10
    quoted = [c for c in cells if c != "—"]
    assert quoted and "—" in cells  # a number the paper gives nothing for stays empty, no generic claim
    for cell in quoted:
        text, source = re.fullmatch(r'"(.*)" \((.*)\)', cell).groups()
        assert _plain(text) in paper_text, cell
        assert _source_in_paper(source, paper_text), cell


def _in_paper(cell: str, text: str) -> bool:
    """Verbatim (parts joined by "..." each verbatim), or a stated number: every number in the cell is
    in the paper."""
    if all(_plain(part) in text for part in cell.split("...")):
        return True
    numbers = re.findall(r"\d+(?:\.\d+)?", cell)
    return bool(numbers) and all(number in text for number in numbers)


def test_the_findings_tables_paper_column_quotes_the_paper(paper_text):
    from analysis.findings import FINDINGS

    assert FINDINGS
    for _, name, words, _ in FINDINGS:
        assert _in_paper(words, paper_text), f"{name}: {words!r} is not in the paper"
    assert not _in_paper("sharing still falls as the network grows", paper_text)  # the check can fail
    assert not _in_paper("a new permutation needs its own first layer", paper_text)
