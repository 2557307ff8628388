"""`pipeline` command line: every command builds a config and calls a plain function."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shlex
import sys
import typing
from pathlib import Path

import click

from pipeline.config import flatten, override, parse_assignments
from pipeline.experiments import get_experiment
from tasks.registry import DataError


def _data_dir_option(command):
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder with the datasets (default: $MODULAR_DATA_DIR or ~/.cache/modular-masks/data).")(
        command)


def _with_data_dir(assignments: dict, data_dir: Path | None) -> dict:
    """--data-dir as the config key data_dir, absolute so that Ray workers in other folders find it."""
    return assignments | {"data_dir": str(data_dir.expanduser().resolve())} if data_dir else assignments


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _scale_options(command):
    """--scale paper|cpu|smoke, and --smoke as its shorthand."""
    from pipeline.experiments import SCALE_HELP, SCALES

    command = click.option("--smoke", is_flag=True, help="Shorthand for --scale smoke.")(command)
    return click.option("--scale", type=click.Choice(SCALES), default=None,
                        help="; ".join(f"{k}: {v}" for k, v in SCALE_HELP.items()) + " (default: paper).")(command)


def _scale(scale: str | None, smoke: bool) -> str:
    if smoke and scale not in (None, "smoke"):
        _fail(f"--smoke and --scale {scale} contradict each other; give one of them")
    return "smoke" if smoke else scale or "paper"


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool):
    """Find functional modules in trained networks with differentiable weight masks."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Import paths (--set task=mypkg.tasks:MyTask) resolve from the current folder, as with `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@main.command("list")
def list_command():
    """Show the sweeps, the experiments and their settings, the tasks and the model families."""
    import dataclasses as dc

    from models.registry import model_families
    from pipeline.experiments import EXPERIMENTS, SCALE_HELP, SWEEPS, experiment_names
    from pipeline.experiments import get_study, study_names
    from tasks.registry import task_class, task_names

    experiment_names()
    click.echo("scales (--scale NAME; --smoke is --scale smoke):")
    for name, text in SCALE_HELP.items():
        click.echo(f"  {name}: {text}")
    click.echo("\nsweeps (pipeline sweep NAME [--scale S]):")
    for name, spec in SWEEPS.items():
        click.echo(f"  {name}: {spec.description}")
        for scale in ("paper", "cpu", "smoke"):
            if scale != "cpu" or scale in spec.scales:
                at = spec.at(scale)
                grid = ", ".join(f"{k} in {v}" for k, v in at.grid.items())
                click.echo(f"    {scale}: experiments {', '.join(at.experiments)}; {grid or 'no grid'}; {at.seeds} seeds")
    click.echo("\nstudies (recipes; the key `study`):")
    for name in study_names():
        click.echo(f"  {name}: {next(iter((inspect.getdoc(get_study(name)) or '').splitlines()), '')}")
    click.echo("\nexperiments (pipeline run NAME [--scale S]):")
    for name, preset in EXPERIMENTS.items():
        click.echo(f"{name}: {preset.description}")
        for key, value in flatten(preset.config).items():
            click.echo(f"    {key} = {value}")
        for scale, overrides in preset.scales.items():
            click.echo(f"    --scale {scale}: " + (", ".join(f"{k}={v}" for k, v in overrides.items()) or "(as paper)"))
    click.echo("\ntasks (--set task=NAME, or an import path mypkg.tasks:MyTask):")
    for name in task_names():
        cls = task_class(name)
        options = ", ".join(f"task_options.{f.name}" for f in dc.fields(getattr(cls, "Options", object))
                            ) if dc.is_dataclass(getattr(cls, "Options", None)) else ""
        click.echo(f"  {name} (version {cls.version}){': ' + options if options else ''}")
    click.echo("\nmodel families (--set model.builder=NAME, or an import path mypkg.nets:build):")
    for name, family in model_families().items():
        settings = ", ".join(f"model.{f.name}={f.default!r}" for f in dc.fields(family.settings) if f.name != "builder")
        click.echo(f"  {name}: needs {', '.join(family.dims)}; {settings}")


@main.command("run")
@click.argument("experiment")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@_scale_options
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--storage", default=None, metavar="URI",
              help="Also keep finished stages here (s3://, gs://, file://...) and reuse what is there.")
@_data_dir_option
def run_command(experiment: str, seed: int, assignments: tuple[str, ...], scale: str | None, smoke: bool,
                results_dir: Path, storage: str | None, data_dir: Path | None):
    """Pretrain, mask and evaluate one trial of EXPERIMENT (resumes where it stopped)."""
    from pipeline.run import run_trial
    from pipeline.trial import resolve

    try:
        config = get_experiment(experiment, scale=_scale(scale, smoke))
        config = override(dataclasses.replace(config, seed=seed),
                          _with_data_dir(parse_assignments(assignments), data_dir))
        result = run_trial(resolve(config), results_dir, storage_uri=storage)
    except (KeyError, ValueError, TypeError, PermissionError, ConnectionError, FileNotFoundError, DataError) as error:
        _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    click.echo(f"\ntrial {result.trial_id} finished")
    for key, value in sorted(result.metrics.items()):
        if key.startswith(("accuracy/none/", "shared_fraction/", "kept/")) or "/full" not in key:
            click.echo(f"  {key}: {value:.4g}")
    click.echo(f"\nmasks and config: {result.trial_dir}")
    click.echo(f"Parquet tables:   {result.parquet_dir}  (pyarrow.dataset.dataset(path, partitioning='hive'))")
    click.echo(f"MLflow run {result.run_id}: mlflow ui --backend-store-uri {shlex.quote(result.tracking_uri)}")


@main.command("sweep")
@click.argument("name")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per grid point (default: the sweep's at its scale; 2 with --smoke).")
@_scale_options
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--storage", default=None, metavar="URI",
              help="Sweep storage shared by all nodes (s3://, gs://, file://...): Tune state, pretrained "
                   "networks, masks, Parquet. Default: the results directory itself.")
@click.option("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option("--cpus-per-trial", type=float, default=1, show_default=True)
@click.option("--gpus-per-trial", type=float, default=0, show_default=True, help="Fractions share a GPU.")
@click.option("--max-failures", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a trial that dies or raises.")
@click.option("--pack-size", type=click.IntRange(min=1), default=None,
              help="Trials that differ only in mask settings (grid axes mask.*) train their masks in one "
                   "pass, up to this many per Tune trial (default: 16 with device=cuda, 4 on a CPU; 1: no "
                   "packing). Resources are per pack.")
@click.option("--memory-per-trial", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB",
              help="Memory Ray reserves for each trial (or pack), so that a node starts only the trials that fit, "
                   "and that a trial waits for before it starts (a retry after a memory kill); measured: an add/mul "
                   "FNN trial peaks at 1.2 GB at the smoke scale, 2.2 GB at the paper's. Default: no reservation.")
@click.option("--resume/--no-resume", default=None,
              help="Resume the interrupted sweep (the default when its state exists); --no-resume starts anew.")
@_data_dir_option
@click.option("--verbose", is_flag=True, help="Tune's full output (trial configs, results, Ray worker logs).")
def sweep_command(name, seeds, scale, smoke, assignments, results_dir, storage, address, cpus_per_trial, gpus_per_trial,
                  max_failures, pack_size, memory_per_trial, resume, data_dir, verbose):
    """Run the sweep NAME on Ray Tune; started again, it resumes without redoing finished trials."""
    from pipeline.sweep import SweepOptions, run_sweep, summary_lines

    try:
        options = SweepOptions(
            name, results_dir, _scale(scale, smoke), seeds, _with_data_dir(parse_assignments(assignments), data_dir),
            address, cpus_per_trial, gpus_per_trial, max_failures, resume, storage_uri=storage, verbose=verbose,
            pack_size=pack_size, memory_per_trial=memory_per_trial)
        summary = run_sweep(options)
    except (KeyError, ValueError, TypeError, PermissionError, ConnectionError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    for line in summary_lines(summary):
        click.echo(line)
    if summary.stopped_by == "SIGTERM":
        raise SystemExit(143)  # 128 + SIGTERM, as a shell reports a process a scheduler stopped
    if summary.interrupted or summary.unfinished:
        raise SystemExit(130)  # like a shell's Ctrl-C: the sweep did not finish
    if summary.failed:
        raise SystemExit(1)


@main.command("analyze")
@click.argument("target")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Where the results are (when TARGET is a sweep or an experiment name).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for figures and report.md.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Only trials whose recorded config key has this value, e.g. mask.beta=1e-4 (repeatable; "
                   "a repeated key means any of its values).")
def analyze_command(target: str, results_dir: Path, out: Path | None, where: tuple[str, ...]):
    """Draw the paper's figures from Parquet. TARGET: a sweep name, an experiment name (its single
    runs), a results directory or a storage URI (s3://, gs://, file://...)."""
    from analysis.data import AnalysisInputError
    from analysis.report import analyze, outcome_line
    from analysis.selection import parse_where

    try:
        directory, sweep, selection, note = _analysis_target(target, results_dir)
        out = out or (results_dir / "analysis" / "storage" if "://" in target else directory / "analysis" / (
            "all" if Path(target).is_dir() else target))
        report, outcomes = analyze([directory], out, sweep, selection | parse_where(where))
    except AnalysisInputError as error:
        _fail(str(error))
    if note:
        click.echo(note)
    for outcome in outcomes:
        click.echo(outcome_line(outcome))
    click.echo(f"report: {report}")
    if sweep:
        from pipeline import records

        uri = records.tracking_uri(directory)
        run_id = records.log_analysis(uri, sweep, out)
        click.echo(f"figures logged to the sweep's MLflow parent run {run_id}" if run_id
                   else f"no MLflow parent run of sweep {sweep!r} in {uri}: figures not logged to MLflow")


def _analysis_target(target: str, results_dir: Path):
    """-> (results folder, sweep to analyse or None, config selection, a note for the user).

    A sweep name with no trials of that sweep falls back to the single runs (`pipeline run`) of its
    experiments; an experiment name means its single runs. Otherwise the error says which command
    would find the trials."""
    from analysis.data import AnalysisInputError, load_tables, trials_by_sweep
    from pipeline.experiments import experiment_names, get_sweep, sweep_names

    if "://" in target or Path(target).is_dir():
        return target if "://" in target else Path(target), None, {}, ""
    sweeps, experiments = sweep_names(), experiment_names()
    if target not in sweeps and target not in experiments:
        from models.common import suggest

        raise AnalysisInputError(f"{target!r} is neither a sweep{suggest(target, sweeps)}, an experiment"
                                 f"{suggest(target, experiments)}, a results directory nor a storage URI")
    present = trials_by_sweep(load_tables([results_dir]))
    if target in sweeps and target in present:
        return results_dir, target, {}, ""
    wanted = list(get_sweep(target).experiments) if target in sweeps else [target]
    if present.get("", set()) & set(wanted):
        note = (f"no trials of sweep {target!r} under {results_dir}: analysing the single runs of its experiments "
                f"{', '.join(wanted)}" if target in sweeps else "")
        return results_dir, None, {"experiment": wanted, "sweep": [""]}, note
    raise AnalysisInputError(_where_the_trials_are(target, wanted, present, results_dir))


def _where_the_trials_are(target: str, wanted: list[str], present: dict[str, set[str]], results_dir: Path) -> str:
    holding = sorted(s for s, found in present.items() if s and found & set(wanted))
    commands = [f"`pipeline analyze {s} --results-dir {results_dir}" + (
        f" --where experiment={target}`" if target not in holding else "`") for s in holding]
    held = ", ".join(f"{s or '(single runs)'}: {', '.join(sorted(e))}" for s, e in sorted(present.items()))
    return (f"no trials of {target!r} under {results_dir} (it holds {held}); "
            + (f"they are in sweeps: {'; '.join(commands)}" if commands else
               f"make some with `pipeline run {wanted[0]}` or `pipeline sweep NAME`"))


@main.command("verify")
@click.argument("results_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
def verify_command(results_dir: Path):
    """Check a results folder: every finished trial's files against their recorded checksums, every
    finished stage against its manifest, every Parquet file readable. Exit code 1 if anything is damaged."""
    from pipeline.verify import damaged

    problems, counts = damaged(results_dir)
    for problem in problems:
        click.echo(f"damaged: {problem}")
    checked = ", ".join(f"{n} {what}" for what, n in counts.items())
    if problems:
        click.echo(f"{len(problems)} damaged file(s) ({checked} checked); run each damaged trial's command again "
                   "to redo what made them")
        raise SystemExit(1)
    click.echo(f"intact: {checked}")


class _DatasetGroup(click.Group):
    """One subcommand per registered dataset maker (tasks.dataset_names), loaded when asked for."""

    def list_commands(self, ctx):
        from tasks.registry import dataset_names

        return dataset_names()

    def get_command(self, ctx, name):
        from tasks.registry import dataset_maker

        try:
            return _dataset_command(name, dataset_maker(name))
        except KeyError as error:
            _fail(str(error.args[0]))


_OPTION_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL,
                 Path: click.Path(path_type=Path)}


def _dataset_command(name: str, maker) -> click.Command:
    """A command whose options are the maker's keyword parameters (--per-module for per_module)."""
    hints = typing.get_type_hints(maker)
    options = []
    for parameter in inspect.signature(maker).parameters.values():
        required = parameter.default is inspect.Parameter.empty
        options.append(click.Option([f"--{parameter.name.replace('_', '-')}"], type=_OPTION_TYPES[hints[parameter.name]],
                                    required=required, default=None if required else parameter.default,
                                    show_default=not required))

    def make(**values):
        try:
            location = maker(**values)
        except (KeyError, ValueError, TypeError, RuntimeError, FileNotFoundError, PermissionError) as error:
            _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error))
        click.echo(f"{name}: {location}")

    return click.Command(name, callback=make, params=options, help=inspect.getdoc(maker))


@main.group("data", cls=_DatasetGroup)
def data_group():
    """Make a dataset that cannot be downloaded at run time (see `pipeline data NAME --help`)."""


if __name__ == "__main__":
    sys.exit(main())
