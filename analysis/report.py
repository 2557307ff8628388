"""Draw every figure the data allows and write report.md beside them."""

from __future__ import annotations

from pathlib import Path

from analysis import convergence
from analysis.data import load_tables
from analysis.paper import Quote
from analysis.plotting import FIGURES, Skip
from analysis.selection import select
from models.common import write_text_atomic


def analyze(results_dirs: list[Path | str], out: Path, sweep: str | None = None,
            where: dict[str, list[str]] | None = None) -> tuple[Path, list]:
    """-> (report path, [Figure | Skip]) of the trials of `sweep` (all if None) whose recorded config
    matches `where` (key -> any of these values). Every registered figure, in the order of their
    names (the paper's figure numbers). Raises AnalysisInputError on unusable input."""
    tables = select(load_tables(results_dirs, sweep), where or {})
    outcomes = [draw(tables, out) for _, draw in sorted(FIGURES.items())]
    report = out / "report.md"
    write_text_atomic(render(outcomes, results_dirs, sweep, tables, where or {}), report)
    return report, outcomes


def outcome_line(outcome) -> str:
    """'  drew    out/fig01_....png' or '  skipped fig02_...: the reason', for a command's output."""
    if isinstance(outcome, Skip):
        return f"  skipped {outcome.name}: {outcome.reason}"
    return f"  drew    {outcome.files[0]}"


def render(outcomes: list, results_dirs, sweep, tables, where: dict | None = None) -> str:
    trials = len({trial for table in tables.values() for trial in table.column("trial_id").unique().to_pylist()})
    selected = "; ".join(f"{k} = {' or '.join(repr(v) for v in values)}" for k, values in (where or {}).items())
    checks = convergence.section(tables)
    lines = [f"# Analysis of {sweep or ', '.join(map(str, results_dirs))}", "",
             *([f"Trials selected by {selected}.", ""] if selected else []),
             f"{trials} trials. Mean ± standard deviation over seeds.", "",
             f"Convergence (last section): {checks[2]}", ""]
    for outcome in outcomes:
        if isinstance(outcome, Skip):
            lines += [f"## {outcome.name} — skipped", "", f"{outcome.reason}.", ""]
            continue
        lines += [f"## {outcome.title}", "", f"![{outcome.name}]({outcome.files[0].name})", "",
                  "| quantity | measured | paper (its words, where it says them) | our reading |", "|---|---|---|---|",
                  *_figure_rows(outcome), ""]
    return "\n".join(lines + checks)


def _figure_rows(figure) -> list[str]:
    """One row per measured number with the paper's quote for that quantity, or "—" where the paper
    gives none (never a claim about something else); then the quotes no number matched."""
    for quote in figure.paper.values():
        if not isinstance(quote, Quote):
            raise TypeError(f"{figure.name}: the paper column takes analysis.paper.Quote, got {quote!r}")
    rows = []
    for key, value in figure.numbers.items():
        quote = next((q for k, q in figure.paper.items() if k in key), "—")
        reading = next((r for k, r in figure.reading.items() if k in key), "")
        rows.append(f"| {key} | {value} | {quote} | {reading} |")
    for key, quote in figure.paper.items():
        if not any(key in k for k in figure.numbers):
            rows.append(f"| {key} | (see figure) | {quote} | {figure.reading.get(key, '')} |")
    return rows
