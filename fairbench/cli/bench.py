"""``fairbench sweep``, ``fairbench leaderboard`` and ``fairbench plot``: benchmark suites,
their tables and figures. Registered on the main group in :mod:`fairbench.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fairbench.cli.options import trust_unmanifested_option, verbose_requested
from fairbench.core.errors import FairbenchError


def _load_plugins(plugins: tuple[str, ...] | list[str]) -> None:
    from fairbench.core.registry import load_plugin_file

    for path in plugins:
        load_plugin_file(path)


def _data_roots(items: tuple[str, ...]) -> dict[str, str] | None:
    """``--data-root PATH`` (every dataset that needs files) or ``--data-root LABEL=PATH``."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if sep and label and "/" not in label:
            out[label.strip()] = path.strip()
        else:
            out["*"] = item
    return out


def _out_path(out: str, *, what: str = "--out") -> Path:
    """``out`` with its folder created; one clear line when that is impossible (a file where
    a folder should be, no permission)."""
    path = Path(out).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"{what} {out!r}: cannot create its folder "
                             f"{str(path.parent)!r} ({exc.strerror or exc}); choose another "
                             f"{what}") from None
    if path.is_dir():
        raise FairbenchError(f"{what} {out!r} is a folder; give a file name")
    return path


def _seeds(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        if "," in value:
            seeds = [int(s) for s in value.split(",") if s.strip()]
        else:
            seeds = list(range(int(value)))
    except ValueError:
        raise FairbenchError(f"--seeds {value!r} must be a count (e.g. 5) or a list (0,1,2)") from None
    if not seeds or any(s < 0 for s in seeds):
        raise FairbenchError(f"--seeds {value!r} must give at least one non-negative seed")
    return seeds


@click.command("sweep")
@click.argument("suite_file", metavar="SUITE.toml", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="List the runs and whether each is finished; run nothing.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where runs execute: local (one by one, or one per GPU) or ray (a Ray "
                   "cluster, or a local Ray instance without --address; needs the ray extra).")
@click.option("--devices", default=None, metavar="LIST",
              help="Local executor: one worker per device, e.g. cuda:0,cuda:1. [default: every GPU if several]")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray executor: the cluster (auto, HOST:6379 or ray://HOST:10001). "
                   "[default: start a local Ray instance]")
@click.option("--cpus-per-run", type=int, default=1, show_default=True,
              help="Ray executor: CPUs (and torch threads) per CPU run.")
@click.option("--num-cpus", type=int, default=None,
              help="Ray executor without --address: CPUs of the local Ray instance. [default: all]")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="Local executor: CPU runs side by side (one worker process each; each "
                   "baseline first).")
@click.option("--threads-per-job", type=int, default=None, metavar="T",
              help="Local executor: torch threads per run. [default: cores / jobs with "
                   "--jobs, else torch's default]")
@click.option("--tracking", type=click.Choice(["mlflow"]), default=None,
              help="Also log every finished run to MLflow (needs the mlflow extra).")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI. [default: the SQLite file RUNS_DIR/mlflow.db]")
@click.option("--runs-dir", default=None, help="Where run directories go. [default: the suite's runs_dir]")
@click.option("--data-root", "data_roots", multiple=True, metavar="[LABEL=]PATH",
              help="Data folder of the suite's datasets (repeatable; LABEL= picks one dataset).")
@click.option("--seeds", default=None, metavar="N|LIST", help="Override the suite's seeds: a count or 0,1,2.")
@click.option("--keep-going", is_flag=True, help="Run the other runs when one fails (a run whose training diverges never stops the sweep).")
@click.option("--retry-failed", is_flag=True, help="Run again the runs recorded as failed (diverged) by an earlier sweep.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Load a local plugin file (repeatable; its code runs, as the suite's plugins do, also with --dry-run).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sweep_cmd(suite_file: str, dry_run: bool, executor: str, devices: str | None,
              address: str | None, cpus_per_run: int, num_cpus: int | None,
              jobs: int, threads_per_job: int | None, tracking: str | None, tracking_uri: str | None,
              runs_dir: str | None, data_roots: tuple[str, ...], seeds: str | None,
              keep_going: bool, retry_failed: bool, plugins: tuple[str, ...],
              quiet: bool) -> None:
    """Run every run of a benchmark suite that is not finished yet.

    \b
    The suite's grid (datasets x backbones x methods x parameter grid x seeds) is expanded
    and checked first; finished runs with the same resolved configuration are skipped, so a
    killed sweep resumes and an edited suite only runs what changed. One vanilla model is
    trained per (dataset, split, backbone, seed) and shared by every method. A damaged run
    (files that do not match its manifest) is computed again. Several sweeps on one runs
    folder (processes, or machines on a shared folder) split the runs: each run is claimed by
    the process computing it, and a dead process's run is taken over. The suite's plugin
    files are imported (their code runs), with --dry-run too.
      fairbench sweep benchmarks/quick.toml --dry-run
      fairbench sweep benchmarks/quick.toml
      fairbench sweep benchmarks/suite_isic2019_resnet18.toml --data-root /data/isic2019
      fairbench sweep benchmarks/quick.toml --executor ray --address auto
      fairbench sweep benchmarks/mechanisms.toml --jobs 2 --threads-per-job 1
    """
    from fairbench.bench.executors import get_executor
    from fairbench.bench.suite import attach_run_options, load_suite
    from fairbench.bench.sweep import run_suite

    _load_plugins(plugins)
    suite = load_suite(suite_file, data_roots=_data_roots(data_roots), runs_dir=runs_dir,
                       seeds=_seeds(seeds), allow_missing_data=dry_run)
    if tracking is not None:
        from fairbench.run.tracking import check_tracking

        check_tracking(tracking)
    elif tracking_uri is not None:
        raise FairbenchError("--tracking-uri needs --tracking mlflow")
    attach_run_options(suite, plugins=plugins, tracking=tracking, tracking_uri=tracking_uri)
    options: dict[str, Any] = {}
    if devices:
        if executor != "local":
            raise FairbenchError("--devices applies to the local executor only")
        options["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
    if jobs != 1 or threads_per_job is not None:
        if executor != "local":
            raise FairbenchError("--jobs and --threads-per-job apply to the local executor "
                                 "only (Ray: --cpus-per-run)")
        options.update(jobs=jobs, threads=threads_per_job)
    if executor == "ray":
        options.update(address=address, cpus_per_run=cpus_per_run, num_cpus=num_cpus)
    elif address is not None or num_cpus is not None:
        raise FairbenchError("--address and --num-cpus apply to --executor ray only")
    runner = get_executor(executor, **options) if not dry_run else None
    report = run_suite(suite, executor=runner, dry_run=dry_run, keep_going=keep_going,
                       retry_failed=retry_failed, progress=not quiet, echo=click.echo)
    if report.failed:
        first = report.failed[0]
        if first.traceback and verbose_requested():
            click.echo(first.traceback, err=True)
        click.echo(f"error: {len(report.failed)} run(s) failed (first: {first.task.label}: "
                   f"{first.error}); finished runs are kept, run the sweep again to resume",
                   err=True)
        raise SystemExit(1)


def _margins(points: float | None) -> dict[str, float] | None:
    """``--margin POINTS`` as the equivalence margins of the default metrics (fractions)."""
    from fairbench.metrics.catalog import EQUIVALENCE_MARGINS

    if points is None:
        return None
    if not points > 0 or points != points:
        raise FairbenchError(f"--margin must be a positive number of points, not {points}; "
                             "use e.g. --margin 2")
    return {k: points / 100 for k in EQUIVALENCE_MARGINS}


@click.command("plan")
@trust_unmanifested_option
@click.argument("suite_file", metavar="SUITE", type=click.Path())
@click.option("--margin", type=float, default=None, metavar="POINTS",
              help="±δ of the equivalence test, in points. [default: the suite's "
                   "equivalence_margin, else 2]")
@click.option("--labels", type=click.Choice(["observed", "true"]), default="true",
              show_default=True, help="Decide the cells on observed or true test labels.")
@click.option("--metric", "metrics", multiple=True, metavar="KEY",
              help="Metrics to plan for (repeatable). [default: EqOddsGap and worst.F1]")
@click.option("--runs-dir", default=None, help="Runs directory of the suite. [default: the suite's]")
@click.option("--data-root", "data_roots", multiple=True, metavar="[LABEL=]PATH",
              help="Data folder of the suite's datasets (to resolve its runs).")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Load a local plugin file (repeatable).")
def plan_cmd(suite_file: str, margin: float | None, labels: str, metrics: tuple[str, ...],
             runs_dir: str | None, data_roots: tuple[str, ...], plugins: tuple[str, ...]) -> None:
    """Seeds needed to decide every cell, from a suite's finished pilot runs.

    \b
    Per method x dataset (or scenario) x metric: the seeds run, the paired change against
    vanilla and its sd, the verdict (better, worse, equivalent within ±margin, undecided), the
    seeds that would decide an undecided cell at the observed mean and variance (80 % power,
    the Holm level), and per table the projected run time of those seeds from the runs'
    recorded wall times. Nothing runs. Examples:
      fairbench plan benchmarks/mechanisms.toml
      fairbench plan benchmarks/mechanisms.toml --margin 3 --metric EqOddsGap
      fairbench plan benchmarks/quick.toml --labels observed
    """
    from fairbench.bench.leaderboard import leaderboard
    from fairbench.bench.planner import render_plan
    from fairbench.metrics import check_directed_metric
    from fairbench.metrics.catalog import MATRIX_COLUMNS

    _load_plugins(plugins)
    if not Path(suite_file).expanduser().is_file():
        raise FairbenchError(f"plan reads a suite file; {suite_file!r} is not one (give e.g. "
                             "benchmarks/mechanisms.toml)")
    for m in metrics:
        check_directed_metric(m, "--metric")
    chosen = list(metrics or MATRIX_COLUMNS)
    margins = _margins(margin)
    if metrics:  # the metrics asked for get the margin (2 points unless --margin)
        points = (margin if margin is not None else 2.0) / 100
        margins = {**(margins or {}), **{m: points for m in metrics}}
    board = leaderboard(suite_file, runs_dir=runs_dir, data_roots=_data_roots(data_roots),
                        labels=labels, margins=margins)
    click.echo(render_plan(board, chosen), nl=False)


@click.command("leaderboard")
@trust_unmanifested_option
@click.argument("source", metavar="SUITE_OR_RUNS_DIR", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default="md",
              show_default=True,
              help="Output format; html: one self-contained page with the tables, their notes "
                   "and the figures (inline SVG).")
@click.option("--view", type=click.Choice(["paper", "compact", "matrix"]), default="paper",
              show_default=True,
              help="paper: rows per group, Avg, Diff; compact: one row per method; matrix: "
                   "methods x scenarios, change against vanilla (EqOddsGap, worst-group F1).")
@click.option("--labels", type=click.Choice(["observed", "true"]), default=None,
              help="Test metrics against the observed labels or the true labels of "
                   "synthetic data. [default: observed; true for --view matrix]")
@click.option("--rule", default=None, metavar="RULE[:k=v,...]",
              help="Selection rule over each method's grid (validation only): best_f1, best_auc, "
                   "best:metric=X, worst_group, minimax_pareto, dto, fair_within_eps[:eps=0.02,"
                   "fairness=EqOddsGap]. [default: the suite's, else fair_within_eps]")
@click.option("--part", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="Which part's metrics fill the table (selection always uses val).")
@click.option("--split", default=None, metavar="HASH", help="Only runs whose split hash starts with HASH.")
@click.option("--test", "test_name", type=click.Choice(["ttest", "wilcoxon"]), default="ttest",
              show_default=True, help="Paired test against vanilla over seeds (Holm-corrected).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Significance level.")
@click.option("--ci", is_flag=True,
              help="Add bootstrap intervals of the seed-mean (F1, EqOddsGap, worst-group F1).")
@click.option("--ci-kind", type=click.Choice(["seeds+samples", "samples"]),
              default="seeds+samples", show_default=True,
              help="seeds+samples: two-stage bootstrap (seeds, then patients/samples within "
                   "each seed); samples: test samples only, the training seed left out.")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--runs-dir", default=None, help="Runs directory of a suite. [default: the suite's]")
@click.option("--data-root", "data_roots", multiple=True, metavar="[LABEL=]PATH",
              help="Data folder of the suite's datasets (to resolve its runs).")
@click.option("--margin", type=float, default=None, metavar="POINTS",
              help="±δ of the equivalence test against vanilla, in points, for F1, worst-group "
                   "F1 and EqOddsGap. [default: the suite's equivalence_margin, else 2]")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Load a local plugin file (repeatable).")
def leaderboard_cmd(source: str, fmt: str, view: str, labels: str | None, rule: str | None,
                    part: str,
                    split: str | None, test_name: str, alpha: float, ci: bool, ci_kind: str,
                    n_boot: int,
                    runs_dir: str | None, data_roots: tuple[str, ...], margin: float | None,
                    out: str | None, plugins: tuple[str, ...]) -> None:
    """Leaderboard of a suite's runs (or of every run in a runs directory).

    Every run is verified against its manifest; a damaged one is an error naming it (redo it,
    or `fairbench runs repair`). A suite file's plugin files are imported (their code runs:
    they define its methods' parameters); a runs directory imports none unless --plugin.

    \b
    Each method's row is the parameter setting picked on validation by the selection rule;
    values are test metrics, mean ± std over seeds, best per column in bold, ▲/▼ where a paired
    test against vanilla over at least 3 seeds (Holm-corrected) finds the method better/worse,
    ≈ where two one-sided tests put it within ±margin of vanilla, ?k where undecided (k seeds
    would decide it at the observed variance), (n=k) where a cell has fewer seeds than the
    table; the missing runs are listed below it.
    The headline fairness column is the equalized-odds gap (EqOddsGap); EOpp0/EOpp1/EOdd are
    the dermatology papers' definitions. Runs of different splits are never mixed. Examples:
      fairbench leaderboard benchmarks/quick.toml
      fairbench leaderboard benchmarks/quick.toml --view compact --ci
      fairbench leaderboard runs --view compact --format latex --out table.tex
      fairbench leaderboard benchmarks/quick.toml --format html --out quick.html
      fairbench leaderboard benchmarks/mechanisms.toml --view matrix [--labels observed]
    """
    from fairbench.bench.leaderboard import leaderboard

    _load_plugins(plugins)
    if n_boot < 10:
        raise FairbenchError("--n-boot must be at least 10")
    target = _out_path(out) if out else None
    labels = labels or ("true" if view == "matrix" else "observed")
    matrix = view == "matrix"
    board = leaderboard(source, rule=rule, part=part, split=split, test=test_name, alpha=alpha,
                        runs_dir=runs_dir, data_roots=_data_roots(data_roots),
                        ci=ci and not matrix, n_resamples=n_boot, ci_kind=ci_kind,
                        labels=labels, margins=_margins(margin))
    if matrix:  # intervals of the paired differences, always
        from fairbench.bench.matrix import build_matrix

        built = build_matrix(board, n_resamples=n_boot)
        if fmt == "html":
            from fairbench.bench.html import matrix_section, render_html

            text = render_html(board, "compact", extra_sections=matrix_section(built))
        else:
            text = built.render(fmt)
    elif fmt == "html":
        from fairbench.bench.html import render_html

        text = render_html(board, view)
    else:
        text = board.render(fmt, view)
    if board.missing:
        click.echo(f"note: {board.missing} run(s) of the suite are not finished and are left out",
                   err=True)
    if target is not None:
        try:
            target.write_text(text)
        except OSError as exc:
            raise FairbenchError(f"cannot write --out {out!r} ({exc.strerror or exc}); choose "
                                 "another --out") from None
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@click.group("plot")
def plot_group() -> None:
    """Figures (PNG and PDF): tradeoff, ablation, groups, cd, matrix.

    \b
    Examples:
      fairbench plot tradeoff benchmarks/quick.toml
      fairbench plot groups runs/quick/synthderm/resampling/*
      fairbench plot cd benchmarks/suite_isic2019_resnet18.toml
      fairbench plot matrix benchmarks/mechanisms.toml
    """


@plot_group.command("tradeoff")
@trust_unmanifested_option
@click.argument("source", metavar="SUITE_OR_RUNS_DIR", type=click.Path())
@click.option("--out", default="plots/tradeoff", show_default=True,
              help="Output path without extension; one PNG/PDF pair per table, named "
                   "<out>-<dataset>-<attribute>-<backbone>.")
@click.option("--rule", default=None, help="Selection rule (see `fairbench leaderboard --help`).")
@click.option("--split", default=None, metavar="HASH", help="Only runs of this split.")
@click.option("--runs-dir", default=None, help="Runs directory of a suite.")
@click.option("--x", "x_metric", default=None,
              help="Fairness metric (x axis). [default: EqOddsGap; gap.Dice for "
                   "segmentation]")
@click.option("--y", "y_metric", default=None,
              help="Utility metric (y axis). [default: F1; Dice for segmentation]")
def plot_tradeoff_cmd(source: str, out: str, rule: str | None, split: str | None,
                      runs_dir: str | None, x_metric: str | None, y_metric: str | None) -> None:
    """F1 against the equalized-odds gap per method (mean ± std over seeds) with the Pareto
    front (Dice against the Dice gap for segmentation tables).

    \b
    Each method keeps its colour in every figure. Examples:
      fairbench plot tradeoff benchmarks/quick.toml
      fairbench plot tradeoff runs --x EOdd --out figures/tradeoff
    """
    from fairbench.bench.leaderboard import leaderboard
    from fairbench.bench.plots import plot_tradeoff, table_file_stem
    from fairbench.metrics import HEADLINE_FAIRNESS, higher_is_better

    for m in (x_metric, y_metric):
        try:
            if m is not None:
                higher_is_better(m)
        except KeyError:
            raise FairbenchError(f"unknown metric {m!r}; use e.g. F1, AUC, EqOddsGap, "
                                 "gap.F1") from None
    _out_path(out)
    board = leaderboard(source, rule=rule, split=split, runs_dir=runs_dir)
    for table in board.tables:
        target = f"{out}-{table_file_stem(table)}"
        seg = table.task == "segmentation"
        x = x_metric or ("gap.Dice" if seg else HEADLINE_FAIRNESS)
        y = y_metric or ("Dice" if seg else "F1")
        for p in plot_tradeoff(table, target, x=x, y=y):
            click.echo(f"wrote {p}")


@plot_group.command("matrix")
@trust_unmanifested_option
@click.argument("source", metavar="SUITE_OR_RUNS_DIR", type=click.Path())
@click.option("--out", default="plots/matrix", show_default=True, help="Output path without extension.")
@click.option("--labels", type=click.Choice(["true", "observed"]), default="true",
              show_default=True, help="Test metrics against the true or the observed labels.")
@click.option("--rule", default=None, help="Selection rule.")
@click.option("--runs-dir", default=None, help="Runs directory of a suite.")
def plot_matrix_cmd(source: str, out: str, labels: str, rule: str | None,
                    runs_dir: str | None) -> None:
    """The mechanism matrix as annotated heatmaps: methods x scenarios, the change against
    vanilla of the equalized-odds gap and of the worst-group F1 (blue = better, red = worse;
    ▲/▼ and bold where significant). Example:
      fairbench plot matrix benchmarks/mechanisms.toml
    """
    from fairbench.bench.leaderboard import leaderboard
    from fairbench.bench.matrix import build_matrix, plot_matrix

    board = leaderboard(source, rule=rule, runs_dir=runs_dir, labels=labels)
    # the heatmap shows changes and marks, no intervals: no bootstrap
    for p in plot_matrix(build_matrix(board, ci=False), out):
        click.echo(f"wrote {p}")


@plot_group.command("ablation")
@trust_unmanifested_option
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="plots/ablation", show_default=True, help="Output path without extension.")
@click.option("--part", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--x", "x_axis", type=click.Choice(["target_ratio", "realized_ratio"]),
              default="target_ratio", show_default=True)
def plot_ablation_cmd(run_dirs: tuple[str, ...], out: str, part: str, x_axis: str) -> None:
    """FairQuantize: precision and EOdd against the quantization ratio, one line per β.

    \b
    The unquantized model (the vanilla runs of the same split and seeds, when the runs folder
    has them) is the point at ratio 0. Examples:
      fairbench run --method fairquantize -p ablation_betas=0.5,1.0
      fairbench plot ablation runs/synthderm/fairquantize/*/ --out figures/ablation
    """
    from fairbench.bench.plots import plot_ablation

    _out_path(out)
    for p in plot_ablation(run_dirs, out, part=part, x=x_axis):
        click.echo(f"wrote {p}")


@plot_group.command("groups")
@trust_unmanifested_option
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="plots/groups", show_default=True, help="Output path without extension.")
@click.option("--part", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--no-vanilla", is_flag=True, help="Leave out the vanilla runs beside the method.")
def plot_groups_cmd(run_dirs: tuple[str, ...], out: str, part: str, no_vanilla: bool) -> None:
    """Per-group bars of a method's runs: mean over the seeds given, ± std as error bars, each
    seed as a dot, the vanilla runs of the same split and seeds beside them (hatched) and the
    test samples per group.

    \b
    Examples:
      fairbench plot groups runs/synthderm/fairquantize/smallcnn-s0-6d31b5ff3c
      fairbench plot groups runs/quick/synthderm/mfd/* --out figures/mfd-groups
    """
    from fairbench.bench.plots import plot_groups

    _out_path(out)
    for p in plot_groups(list(run_dirs), out, part=part, vanilla=not no_vanilla):
        click.echo(f"wrote {p}")


@plot_group.command("cd")
@trust_unmanifested_option
@click.argument("source", metavar="SUITE_OR_RUNS_DIR", type=click.Path())
@click.option("--metric", default="F1", show_default=True, help="Metric to rank methods by.")
@click.option("--alpha", type=click.Choice(["0.05", "0.1"]), default="0.05", show_default=True)
@click.option("--out", default="plots/cd", show_default=True, help="Output path without extension.")
@click.option("--rule", default=None, help="Selection rule.")
@click.option("--runs-dir", default=None, help="Runs directory of a suite.")
@click.option("--gate", type=click.Choice(["chi2", "iman-davenport"]), default="chi2",
              show_default=True,
              help="Omnibus test that must reject before ranks are compared pairwise.")
def plot_cd_cmd(source: str, metric: str, alpha: str, out: str, rule: str | None,
                runs_dir: str | None, gate: str) -> None:
    """Critical-difference diagram: Friedman test and average ranks across datasets.

    \b
    The critical difference (Nemenyi, from the studentized range) and the cliques of methods
    within it are drawn only when the omnibus test (Friedman chi2, or Iman-Davenport F with
    --gate iman-davenport) rejects at alpha; otherwise the figure shows the ranks and says
    that they are not to be compared pairwise. Example:
      fairbench plot cd benchmarks/suite_isic2019_resnet18.toml --metric worst.F1
    """
    from fairbench.bench.leaderboard import leaderboard
    from fairbench.bench.plots import plot_cd

    _out_path(out)
    board = leaderboard(source, rule=rule, runs_dir=runs_dir)
    res = board.friedman(metric, float(alpha), gate=gate.replace("-", "_"))
    if isinstance(res, str):
        raise FairbenchError(f"cannot draw a critical-difference plot: the Friedman test {res} "
                             f"(this source has {len(board.tables)} table(s))")
    title = (f"{metric}, {res.n_datasets} datasets: Friedman chi2 = {res.statistic:.2f}, "
             f"p = {res.pvalue:.3g}; Iman-Davenport F = {res.f_statistic:.2f}, "
             f"p = {res.f_pvalue:.3g}")
    for p in plot_cd(res.avg_ranks, res.cd, out, title=title, significant=res.significant,
                     gate_text=res.gate_text):
        click.echo(f"wrote {p}")
    click.echo(title)
    if not res.significant:
        click.echo(f"{res.gate_text}: the ranks are not compared pairwise (no CD drawn)")


BENCH_COMMANDS = {"sweep": sweep_cmd, "leaderboard": leaderboard_cmd, "plan": plan_cmd,
                  "plot": plot_group}
