"""The paper-style table of one run (FairQuantize Table 1 layout): rows per group, Avg and
Diff; columns precision, recall, F1 and the fairness metrics EOpp0, EOpp1, EOdd."""

from __future__ import annotations

from typing import Any

UTILITY = ("precision", "recall", "F1")
FAIRNESS = ("EOpp0", "EOpp1", "EOdd")


def _fmt(value: Any, width: int = 9) -> str:
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
    header = "group".ljust(name_w) + "".join(c.rjust(9) for c in (*UTILITY, *FAIRNESS))
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for g in groups:
        vals = part_metrics.get(g, {})
        lines.append(g.ljust(name_w) + "".join(_fmt(vals.get(c)) for c in UTILITY)
                     + " " * 9 * len(FAIRNESS))
    avg = part_metrics.get("Avg", {})
    lines.append("Avg".ljust(name_w) + "".join(_fmt(avg.get(c)) for c in UTILITY)
                 + "".join(_fmt(part_metrics.get(c)) for c in FAIRNESS))
    diff = part_metrics.get("Diff", {})
    lines.append("Diff".ljust(name_w) + "".join(_fmt(diff.get(c)) for c in UTILITY)
                 + " " * 9 * len(FAIRNESS))
    lines.append("All".ljust(name_w) + "".join(_fmt(part_metrics.get(c)) for c in UTILITY)
                 + "".join(_fmt(part_metrics.get(c)) for c in FAIRNESS))
    return "\n".join(lines)


def run_summary(config: dict[str, Any], metrics: dict[str, Any], *, parts: tuple[str, ...] = ("test",)) -> str:
    groups = metrics.get("meta", {}).get("groups") or config.get("groups", [])
    head = (f"{config['method']} on {config['dataset']} ({config['attribute']}; privileged: "
            f"{config.get('privileged')}), backbone {config['backbone']}, seed {config['seed']}, "
            f"split {config['split_sha256'][:12]}")
    out = [head]
    for part in parts:
        if part in metrics:
            out.append("")
            out.append(paper_table(metrics[part], groups, title=f"[{part}] values in %"))
    diff_sign = metrics.get("meta", {}).get("diff_sign")
    if diff_sign:
        out.append(f"\nDiff = |{diff_sign}|; EOpp/EOdd: macro mean over classes of absolute "
                   "group gaps (signed twins in metrics.json).")
    return "\n".join(out)
