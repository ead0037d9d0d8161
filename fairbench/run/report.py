"""The paper-style table of one run (FairQuantize Table 1 layout): rows per group, Avg and
Diff; columns precision, recall, F1, the equalized-odds gap (EqOddsGap, the headline) and the
papers' fairness metrics EOpp0, EOpp1, EOdd. Segmentation
runs get the FairSeg layout: columns Dice and IoU (per structure when there are several),
the equity-scaled Dice and IoU of both published definitions on the All row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairbench.core.files import read_json
from fairbench.metrics.catalog import (
    COMPARE_GROUP,
    COMPARE_OVERALL,
    COMPARE_SEGMENTATION,
    COMPARE_SEGMENTATION_GROUP,
    FAIRNESS_COLUMNS,
    PAPER_FAIRNESS,
    PAPER_UTILITY,
)
from fairbench.run.engagement import engagement_text

W = 10  # column width


def _fmt(value: Any, width: int = W) -> str:
    if value is None:
        return "-".rjust(width)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value).rjust(width)
    if v != v:  # nan
        return "-".rjust(width)
    return f"{v * 100:.2f}".rjust(width)


def paper_table(part_metrics: dict[str, Any], groups: list[str], *, title: str = "") -> str:
    """Rows: each group, ``Avg`` (mean over groups), ``Diff`` (|group1 − group0|) and ``All``
    (every sample). Values in percent; fairness columns are filled on the Avg row (they are
    between-group quantities) and repeated for All."""
    name_w = max(8, *(len(g) + 1 for g in groups))
    header = "group".ljust(name_w) + "".join(c.rjust(W) for c in (*PAPER_UTILITY, *FAIRNESS_COLUMNS))
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for g in groups:
        vals = part_metrics.get(g, {})
        lines.append(g.ljust(name_w) + "".join(_fmt(vals.get(c)) for c in PAPER_UTILITY)
                     + " " * W * len(FAIRNESS_COLUMNS))
    avg = part_metrics.get("Avg", {})
    lines.append("Avg".ljust(name_w) + "".join(_fmt(avg.get(c)) for c in PAPER_UTILITY)
                 + "".join(_fmt(part_metrics.get(c)) for c in FAIRNESS_COLUMNS))
    diff = part_metrics.get("Diff", {})
    lines.append("Diff".ljust(name_w) + "".join(_fmt(diff.get(c)) for c in PAPER_UTILITY)
                 + " " * W * len(FAIRNESS_COLUMNS))
    lines.append("All".ljust(name_w) + "".join(_fmt(part_metrics.get(c)) for c in PAPER_UTILITY)
                 + "".join(_fmt(part_metrics.get(c)) for c in FAIRNESS_COLUMNS))
    return "\n".join(lines)


ES_FAMILIES = ("ES_fairseg", "ES_fairmedfm")


def segmentation_table(part_metrics: dict[str, Any], groups: list[str],
                       mask_classes: list[str], *, title: str = "") -> str:
    """Rows: each group, ``Avg``, ``Diff`` (|group1 − group0|, or max − min), ``All``; columns
    Dice and IoU (and per structure), then on the All row the equity-scaled Dice of FairSeg
    (``ES_fairseg``: Dice / (1 + Σ_g |Dice_g − Dice|)) and of FairMedFM (``ES_fairmedfm``:
    Dice / (1 + std_g Dice_g)). Values in percent."""
    from fairbench.metrics import segmentation_metric_names

    base = segmentation_metric_names(mask_classes)
    es_cols = [f"{fam}.Dice" for fam in ES_FAMILIES]
    name_w = max(8, *(len(g) + 1 for g in groups))
    widths = [max(9, len(c) + 2) for c in (*base, *es_cols)]
    header = "group".ljust(name_w) + "".join(
        c.rjust(w) for c, w in zip((*base, *es_cols), widths))
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    blank = "".join(" " * w for w in widths[len(base):])

    def row(name: str, vals: dict[str, Any], tail: str) -> str:
        return name.ljust(name_w) + "".join(
            _fmt(vals.get(c), w) for c, w in zip(base, widths)) + tail

    for g in groups:
        lines.append(row(g, part_metrics.get(g, {}), blank))
    lines.append(row("Avg", part_metrics.get("Avg", {}), blank))
    lines.append(row("Diff", part_metrics.get("Diff", {}), blank))
    es = "".join(_fmt(part_metrics.get(fam, {}).get("Dice"), w)
                 for fam, w in zip(ES_FAMILIES, widths[len(base):]))
    lines.append(row("All", part_metrics, es))
    return "\n".join(lines)


def run_summary(config: dict[str, Any], metrics: dict[str, Any], *, parts: tuple[str, ...] = ("test",)) -> str:
    groups = metrics.get("meta", {}).get("groups") or config.get("groups", [])
    head = (f"{config['method']} on {config['dataset']} ({config['attribute']}; privileged: "
            f"{config.get('privileged')}), backbone {config['backbone']}, seed {config['seed']}, "
            f"split {config['split_sha256'][:12]}")
    meta = metrics.get("meta", {})
    segmentation = meta.get("task") == "segmentation"
    if segmentation:
        head = head.replace(" on ", " (segmentation) on ", 1)
    out = [head]
    for part in parts:
        if part in metrics:
            out.append("")
            title = f"[{part}] values in %"
            out.append(segmentation_table(metrics[part], groups, meta.get("mask_classes", []),
                                          title=title) if segmentation
                       else paper_table(metrics[part], groups, title=title))
    if "test" in parts and "test_true" in metrics:
        out.append("")
        out.append(paper_table(metrics["test_true"], groups,
                               title="[test, true labels] values in % (synthetic data: the "
                                     "same predictions against each image's true class)"))
        out.append(ground_truth_line(metrics["test"], metrics["test_true"]))
    leak = leakage_line(metrics.get("leakage"), config.get("attribute"))
    if leak:
        out.append(leak)
    twins = counterfactual_line(metrics.get("counterfactual"))
    if twins:
        out.append(twins)
    out.append(engagement_text(config.get("engagement")))
    diff_sign = meta.get("diff_sign")
    if segmentation:
        out.append(f"\nDice and IoU per image, then averaged; Diff = |{diff_sign}|; "
                   "ES_fairseg = Dice / (1 + sum of |group - overall|), ES_fairmedfm = "
                   "Dice / (1 + std over groups).")
    elif diff_sign:
        out.append(f"\nDiff = |{diff_sign}|; EqOddsGap: per class the largest group gap in TPR "
                   "or FPR, macro mean over classes (the headline). EOpp0/EOpp1/EOdd: the "
                   "dermatology papers' definitions (macro mean of absolute group gaps; signed "
                   "twins in metrics.json); EOdd reads 0 when one group is worse on both TPR "
                   "and FPR.")
    timing = time_line(config.get("seconds", {}), config.get("device"))
    if timing:
        out.append(timing)
    return "\n".join(out)


def ground_truth_line(observed: dict[str, Any], true: dict[str, Any]) -> str:
    """The headline numbers on observed and on true labels, side by side."""
    def pair(key: str, sub: str | None = None) -> str:
        a = observed.get(sub, {}).get(key) if sub else observed.get(key)
        b = true.get(sub, {}).get(key) if sub else true.get(key)
        return f"{_fmt(a, 0).strip()} / {_fmt(b, 0).strip()}"

    return (f"observed / true labels (test): F1 {pair('F1')}, worst-group F1 "
            f"{pair('F1', 'worst')}, EqOddsGap {pair('EqOddsGap')}")


def counterfactual_line(record: dict[str, Any] | None) -> str:
    """The counterfactual twins of a run in one line (empty when the data has none)."""
    if not record:
        return ""
    groups = ", ".join(f"{g} {v['flip_rate']:.3f} (F1 {v['observed_F1'] * 100:.2f} -> "
                       f"{v['swapped_F1'] * 100:.2f} on its twins)"
                       for g, v in record.get("per_group", {}).items())
    return (f"counterfactual twins (test, only the skin switched): predictions flip on "
            f"{record['flip_rate']:.3f} of the images (independent predictions would: "
            f"{record['flip_rate_chance']:.3f}), mean |change of p(true class)| "
            f"{record['mean_abs_delta_p_true']:.3f}; per group: {groups}")


def leakage_line(leak: dict[str, Any] | None, attribute: str | None) -> str:
    """The leakage probe of a run in one line (empty when the run has none)."""
    if not leak:
        return ""
    if "skipped" in leak:
        return f"leakage probe: skipped ({leak['skipped']})"
    text = (f"leakage of {attribute or 'the attribute'} from the {leak.get('representation')} "
            f"({leak.get('dim')}-d; linear probe fit on {leak.get('fit_part')}, scored on "
            f"{leak.get('score_part')}): balanced accuracy {leak['balanced_accuracy']:.3f}, "
            f"AUC {leak['auc']:.3f} (chance {leak.get('chance', 0.5):.2f})")
    pooled = leak.get("pooled")
    if pooled:
        text += (f"; pooled embedding: balanced accuracy {pooled['balanced_accuracy']:.3f}, "
                 f"AUC {pooled['auc']:.3f}")
    return text


def time_line(seconds: dict[str, Any], device: str | None = None) -> str:
    """``wall 81.2 s on cpu: data 1.0, vanilla 40.1, train 30.2, ...`` from a run's
    ``seconds`` record (runs made before phases were recorded give the total only)."""
    total = seconds.get("total")
    if total is None:
        return ""
    where = f" on {device}" if device else ""
    phases = seconds.get("phases") or {}
    detail = ", ".join(f"{name} {value:.1f}" for name, value in phases.items() if value >= 0.05)
    return f"wall {total:.1f} s{where}" + (f"; by phase (s): {detail}" if detail else "")


def find_vanilla_run(run_dir: str | Path) -> Path | None:
    """The finished (verified) vanilla run of the same runs folder, dataset configuration,
    split, attribute, backbone, train settings and seed as ``run_dir`` (``None`` when there is
    none, when ``run_dir`` is no readable run, or when it is itself a vanilla run); damaged
    candidates are passed over."""
    from fairbench.run.store import check_run

    run_dir = Path(run_dir)
    if not check_run(run_dir).finished:
        return None
    cfg = read_json(run_dir / "config.json")
    if cfg.get("method") == "vanilla":
        return None
    ident = cfg.get("identity", {})
    same = ("dataset", "split", "attribute", "backbone", "backbone_params", "weights",
            "image_size", "train", "seed")
    for candidate in sorted(run_dir.parent.parent.glob("vanilla/*")):
        if not check_run(candidate).finished:
            continue
        oid = read_json(candidate / "config.json").get("identity", {})
        if all(oid.get(k) == ident.get(k) for k in same if k in ident):
            return candidate
    return None


def comparison_frame(metrics: dict[str, Any], vanilla: dict[str, Any] | None, *,
                     part: str = "test") -> Any:
    """One row per metric (overall, then per group with the test samples ``n``): the run's
    value, the shared vanilla model's on the same split and seed, and the difference (run −
    vanilla), as fractions; ``direction`` says which way is better. Without a vanilla run the
    vanilla and difference columns are empty."""
    import pandas as pd

    from fairbench.metrics import flatten, higher_is_better

    meta = metrics.get("meta", {})
    flat = flatten(metrics.get(part, {}))
    base = flatten(vanilla.get(part, {})) if vanilla else {}
    groups = meta.get("groups") or []
    segmentation = meta.get("task") == "segmentation"
    keys = list(COMPARE_SEGMENTATION if segmentation else COMPARE_OVERALL)
    per_group = COMPARE_SEGMENTATION_GROUP if segmentation else COMPARE_GROUP
    keys += [f"{g}.{m}" for g in groups for m in per_group]
    rows = []
    for key in keys:
        if key not in flat:
            continue
        value, ref = flat.get(key), base.get(key)
        diff = (value - ref) if isinstance(value, (int, float)) and isinstance(
            ref, (int, float)) else None
        direction = higher_is_better(key)
        name = key + (" (paper)" if key in PAPER_FAIRNESS else "")
        rows.append({"metric": name, "run": value, "vanilla": ref, "difference": diff,
                     "direction": {True: "higher is better", False: "lower is better"}.get(
                         direction, "")})
    return pd.DataFrame(rows, columns=["metric", "run", "vanilla", "difference", "direction"])


def _pct(value: Any, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def comparison_text(frame: Any, fmt: str = "text", *, title: str = "") -> str:
    """``frame`` (:func:`comparison_frame`) as ``text``, ``md``, ``csv`` or ``latex``; values
    in percent except ``n`` (csv: fractions, as stored)."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    rows = []
    for r in frame.itertuples(index=False):
        is_n = r.metric.endswith(".n")
        fmt_v = (lambda v: "-" if v is None or v != v else str(int(v))) if is_n else _pct
        rows.append((r.metric, fmt_v(r.run), fmt_v(r.vanilla),
                     (fmt_v(r.difference) if is_n else _pct(r.difference, signed=True)),
                     {"higher is better": "↑", "lower is better": "↓"}.get(r.direction, "")))
    head = ("metric", "run", "vanilla", "run - vanilla", "")
    if fmt == "md":
        out = ([f"**{title}**", ""] if title else []) + [
            "| " + " | ".join(head) + " |", "|:--|--:|--:|--:|:-:|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out) + "\n"
    if fmt == "latex":
        tex = {"_": "\\_", "%": "\\%", "&": "\\&", "↑": "$\\uparrow$", "↓": "$\\downarrow$"}

        def esc(text: str) -> str:
            return "".join(tex.get(ch, ch) for ch in text)

        out = ["% requires \\usepackage{booktabs}", "\\begin{tabular}{lrrrc}", "\\toprule",
               " & ".join(esc(h) for h in head) + " \\\\", "\\midrule"]
        out += [" & ".join(esc(c) for c in r) + " \\\\" for r in rows]
        out += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(out) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)] if rows \
        else [len(h) for h in head]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = ([title] if title else []) + [line(head), "-" * len(line(head))]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"
