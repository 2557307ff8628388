"""Redraw the figures and report.md from Parquet alone: needs pyarrow and matplotlib, not torch, Ray
or MLflow (`pipeline analyze` calls the same function and also finds results by sweep or experiment
name and logs the report to MLflow).

    python -m analysis reproduction/addmul --out /tmp/addmul
    python -m analysis results --sweep alpha-sensitivity --where mask.beta=1e-5 --where model.size=big
    python -m analysis s3://bucket/modular-masks --out figures
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analysis.data import AnalysisInputError
from analysis.report import analyze, outcome_line
from analysis.selection import parse_where

log = logging.getLogger("analysis")


def default_out(target: str, sweep: str | None) -> Path:
    """<TARGET>/analysis/<sweep or "all">, as `pipeline analyze` puts it; a storage URI needs --out."""
    if "://" in target:
        raise AnalysisInputError(f"{target} is a storage URI: give --out, a local folder for the figures")
    return Path(target) / "analysis" / (sweep or "all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="a results folder (with parquet/<table>/) or a storage URI (s3://, gs://, file://...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the figures and report.md (default: TARGET/analysis/SWEEP or .../all)")
    parser.add_argument("--sweep", default=None, help="only the trials of this sweep")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only trials whose recorded config key has this value, e.g. mask.beta=1e-4 "
                             "(repeatable; a repeated key means any of its values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = args.out or default_out(args.targets[0], args.sweep)
        report, outcomes = analyze(args.targets, out, args.sweep, parse_where(args.where))
    except AnalysisInputError as error:
        log.error("error: %s", error)
        return 2
    for outcome in outcomes:
        log.info(outcome_line(outcome))
    log.info("report: %s", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
