"""Draw every figure the data allows and write report.md beside them."""

from __future__ import annotations

from pathlib import Path

from analysis import cifar10, mathematics, permuted_mnist, scan
from analysis.data import load_tables
from analysis.figures import ALL_FIGURES, Skip
from analysis.selection import select


def analyze(results_dirs: list[Path], out: Path, sweep: str | None = None,
            where: dict[str, list[str]] | None = None) -> tuple[Path, list]:
    """-> (report path, [Figure | Skip]) of the trials of `sweep` (all if None) whose recorded config
    matches `where` (key -> any of these values). Raises AnalysisInputError on unusable input."""
    tables = select(load_tables(results_dirs, sweep), where or {})
    outcomes = [draw(tables, out) for draw in [*ALL_FIGURES, *mathematics.FIGURES, *permuted_mnist.FIGURES,
                                               *cifar10.FIGURES, *scan.FIGURES]]
    report = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    tmp = report.with_name(".report.md.tmp")
    tmp.write_text(render(outcomes, results_dirs, sweep, tables, where or {}))
    tmp.replace(report)
    return report, outcomes


def render(outcomes: list, results_dirs, sweep, tables, where: dict | None = None) -> str:
    trials = len(set(tables["metrics"].column("trial_id").to_pylist())) if "metrics" in tables else 0
    selected = "; ".join(f"{k} = {' or '.join(repr(v) for v in values)}" for k, values in (where or {}).items())
    lines = [f"# Analysis of {sweep or ', '.join(map(str, results_dirs))}", "",
             *([f"Trials selected by {selected}.", ""] if selected else []),
             f"{trials} trials. Mean ± standard deviation over seeds.", ""]
    for outcome in outcomes:
        if isinstance(outcome, Skip):
            lines += [f"## {outcome.name} — skipped", "", f"{outcome.reason}.", ""]
            continue
        lines += [f"## {outcome.title}", "", f"![{outcome.name}]({outcome.files[0].name})", "",
                  "| quantity | measured | paper |", "|---|---|---|"]
        claim = "; ".join(f"{v}" if k == "pattern" else f"{k}: {v}" for k, v in outcome.paper.items())
        for key, value in outcome.numbers.items():
            # the paper's value for this quantity where it gives one, else its claim for the figure
            paper = next((v for k, v in outcome.paper.items() if k != "pattern" and k in key), claim)
            lines.append(f"| {key} | {value} | {paper} |")
        for key, value in outcome.paper.items():
            if key != "pattern" and not any(key in k for k in outcome.numbers):
                lines.append(f"| {key} | (see figure) | {value} |")
        lines.append("")
    return "\n".join(lines)
