"""One disaggregation engine behind every per-group view (as fairlearn's MetricFrame).

For a metric :math:`m` and groups :math:`G` (codes :math:`0..|G|-1`):

* per group: :math:`m_g` computed on the rows of group :math:`g`;
* ``Avg``: the unweighted mean :math:`\\frac1{|G|}\\sum_g m_g` (the papers' "Avg." row);
* ``gap``: :math:`\\max_g m_g - \\min_g m_g` (lower is better);
* ``worst``: :math:`\\min_g m_g` if higher is better, else :math:`\\max_g m_g`;
* ``Diff``: :math:`|m_0 - m_1|` and ``Diff_signed``: :math:`m_0 - m_1` (group code 0 minus
  code 1: the direction of every signed difference in ``metrics.json``, the papers' signed
  EOpp/EOdd twins included, named by ``meta.signed_direction``; the FairQuantize tables'
  signed Diff is its negative); with more than two groups ``Diff`` is the gap and
  ``Diff_signed`` is ``nan``.

**Undefined groups.** One group whose value is undefined (``nan``: an AUC of a group with a
single class, a group with no rows) makes ``Avg``, ``gap``, ``worst`` and ``Diff`` undefined
too: a summary over the groups is never read off the groups that happen to be defined. (A
group absent from the part leaves ``Avg`` as the mean of the others and the rest ``nan``.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .catalog import SUMMARY_KEYS

GroupValues = dict[str, dict[str, float]]


def disaggregate(
    compute: Callable[[np.ndarray], dict[str, float]],
    groups: np.ndarray,
    names: list[str],
) -> dict[str, dict[str, float]]:
    """``compute(row_mask)`` per group, keyed by group name (groups with no rows are absent)."""
    out = {}
    for code, name in enumerate(names):
        sel = groups == code
        if sel.any():
            out[name] = compute(sel)
    return out


def summarise(per_group: Mapping[str, Mapping[str, float]], names: list[str],
              higher_is_better: Mapping[str, bool | None]) -> dict[str, dict[str, float]]:
    """``Avg``, ``gap``, ``worst``, ``Diff`` and ``Diff_signed`` of every metric."""
    present = [n for n in names if n in per_group]
    metrics = list(next(iter(per_group.values())).keys()) if per_group else []
    out: dict[str, dict[str, float]] = {k: {} for k in SUMMARY_KEYS}
    for m in metrics:
        vals = np.array([per_group[n][m] for n in present], dtype=float)
        finite = vals[np.isfinite(vals)]
        nan = float("nan")
        out["Avg"][m] = float(finite.mean()) if len(finite) == len(vals) and len(vals) else nan
        if len(finite) == len(vals) and len(vals) >= 2:
            gap = float(vals.max() - vals.min())
            hib = higher_is_better.get(m)
            out["gap"][m] = gap
            out["worst"][m] = float(vals.min() if hib in (True, None) else vals.max())
            if len(names) == 2 and len(present) == 2:
                signed = float(per_group[names[0]][m] - per_group[names[1]][m])
                out["Diff"][m], out["Diff_signed"][m] = abs(signed), signed
            else:
                out["Diff"][m], out["Diff_signed"][m] = gap, nan
        else:
            for k in SUMMARY_KEYS[1:]:
                out[k][m] = nan
    return out
