"""``fairbench.models.multiexit``: the batched exit policy on hand-made logits (A and B, no
confident exit, ties, the ``>=`` boundary), heads on every known backbone, the pooled size,
and the exit histogram and compute report."""

from __future__ import annotations

import pytest
import torch

from fairbench import create_backbone
from fairbench.models.multiexit import (
    KNOWN_STAGES,
    MultiExit,
    exit_costs,
    exit_fallback,
    exit_policy,
    exit_report,
    pooled_size,
    resolve_exit_spec,
)
from fairbench.run.multiexit import MultiExitParams


def logits_from_probs(rows: list[list[list[float]]]) -> torch.Tensor:
    """K×B×C logits whose softmax is the given probabilities."""
    return torch.tensor(rows, dtype=torch.float64).log()


def tiny_model(seed: int = 0, weights=(0.5, 1.0, 0.0, 2.0, 1.5), width: int = 2) -> MultiExit:
    torch.manual_seed(seed)
    backbone = create_backbone("smallcnn", num_classes=3, image_size=16, width=width)
    spec = resolve_exit_spec("smallcnn", MultiExitParams(exit_weights=tuple(weights)))
    return MultiExit(backbone, spec, image_size=16, num_classes=3, tau=0.9, policy="A")


# -- exit policy ---------------------------------------------------------------------------------
# 3 exits (the last is the final classifier), 5 samples, 2 classes; confidence = max prob
PROBS = [
    # exit 0        sample 0    1           2           3           4
    [[0.95, 0.05], [0.6, 0.4], [0.4, 0.6], [0.5, 0.5], [0.7, 0.3]],
    [[0.5, 0.5], [0.08, 0.92], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]],
    [[0.5, 0.5], [0.5, 0.5], [0.7, 0.3], [0.01, 0.99], [0.6, 0.4]],
]


@pytest.mark.parametrize("policy, expected", [
    # 0: confident at once; 1: first confident is exit 1; 2: none confident (A: most
    # confident = exit 1 at 0.8; B: final); 3: only the final is; 4: none, tie 0.7/0.7 (A: the
    # shallower)
    ("A", [0, 1, 1, 2, 0]),
    ("B", [0, 1, 2, 2, 2]),
])
def test_exit_policy_hand_made(policy, expected):
    logits = logits_from_probs(PROBS)
    chosen_logits, chosen = exit_policy(logits, 0.9, policy)
    assert chosen.tolist() == expected
    for b, k in enumerate(expected):
        assert torch.equal(chosen_logits[b], logits[k, b])
    # a list of per-exit tensors gives the same as the stacked K×B×C tensor
    _, from_list = exit_policy(list(logits), 0.9, policy)
    assert from_list.tolist() == expected


def test_exit_policy_no_confident_exit_and_boundary():
    logits = logits_from_probs(PROBS)
    # τ = 1: nobody is confident -> A picks each sample's most confident exit, B the final one
    _, a = exit_policy(logits, 1.0, "A")
    conf = torch.tensor(PROBS).amax(-1)
    assert a.tolist() == conf.argmax(0).tolist() == [0, 1, 1, 2, 0]
    _, b = exit_policy(logits, 1.0, "B")
    assert b.tolist() == [2] * 5
    # confidence exactly τ counts as confident (>=): equal logits give exactly 1/2
    even = torch.zeros(3, 2, 2)
    even[0, 1] = torch.tensor([0.0, 3.0])
    _, c = exit_policy(even, 0.5, "B")
    assert c.tolist() == [0, 0]
    _, d = exit_policy(even, 0.51, "B")
    assert d.tolist() == [2, 0]
    with pytest.raises(ValueError, match="policy"):
        exit_policy(logits, 0.9, "C")  # type: ignore[arg-type]


def test_forward_is_the_policy_over_all_exits_and_tau_travels():
    model = tiny_model(width=4).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        exits = model.exits(x)
        assert len(exits) == model.n_exits == 5 and all(e.shape == (6, 3) for e in exits)
        assert torch.equal(exits[-1], model.backbone(x))  # the final exit is the backbone
        for tau in (0.34, 0.5, 1.0):
            model.tau.fill_(tau)
            assert torch.equal(model(x), exit_policy(exits, tau, "A")[0])
    state = model.state_dict()
    assert "tau" in state and float(state["tau"]) == pytest.approx(1.0)
    assert any(k.startswith("heads.3.") for k in state)


@pytest.mark.parametrize("name", sorted(KNOWN_STAGES))
def test_heads_on_every_known_backbone(name):
    size = 32
    params = {"width": 4} if name == "smallcnn" else {}
    backbone = create_backbone(name, num_classes=3, image_size=size, **params)
    spec = resolve_exit_spec(name, MultiExitParams())
    model = MultiExit(backbone, spec, image_size=size, num_classes=3).eval()
    with torch.no_grad():
        out = model.exits(torch.randn(2, 3, size, size))
    assert len(out) == len(KNOWN_STAGES[name]) + 1 and all(o.shape == (2, 3) for o in out)
    expected = (0.3, 0.45, 0.6, 0.75, 0.9) if "vgg" in name else (1.0,) * 5
    assert model.exit_weights == expected
    costs = exit_costs(model, size)
    assert costs["per_exit"] == sorted(costs["per_exit"])  # deeper exits cost more
    assert costs["per_exit"][-1] == costs["backbone"] + sum(costs["heads"])


def test_pooled_size_never_upsamples_unless_asked():
    assert [pooled_size(h, 8, False) for h in (64, 32, 12, 7, 4, 1)] == [8, 8, 6, 7, 4, 1]
    assert pooled_size(4, 64, True) == 64


def test_exit_report_histogram_and_compute():
    costs = {"per_exit": [10e6, 30e6, 100e6], "backbone": 80e6, "heads": [10e6, 10e6]}
    rep = exit_report(torch.tensor([0, 0, 2, 1]), costs)
    assert rep["counts"] == [2, 1, 1] and rep["fractions"] == [0.5, 0.25, 0.25]
    assert rep["mean_mmac_per_sample"] == pytest.approx(37.5)
    assert rep["mean_compute_vs_backbone"] == pytest.approx(37.5 / 80, abs=1e-4)


def test_fallback_samples_cost_the_whole_backbone_and_every_head():
    """Policy A sends a sample that no exit lets out to its most confident exit, but deciding
    so ran every exit: it is charged the final exit's total (backbone plus every head), not
    the cost of the exit it was given."""
    costs = {"per_exit": [10e6, 30e6, 100e6], "backbone": 80e6, "heads": [10e6, 10e6]}
    sure, unsure = [8.0, 0.0], [0.2, 0.0]  # softmax max 0.9997 / 0.55
    # sample 0: exit 0 confident; sample 1: none confident, exit 1 the most confident;
    # sample 2: none confident, exit 0 the most confident; sample 3: exit 1 confident
    logits = torch.tensor([
        [sure, [0.3, 0.0], [0.5, 0.0], unsure],
        [unsure, [0.6, 0.0], [0.1, 0.0], sure],
        [unsure, [0.2, 0.0], [0.2, 0.0], unsure],
    ])
    _, chosen = exit_policy(logits, 0.9, "A")
    assert chosen.tolist() == [0, 1, 0, 1]
    back = exit_fallback(logits, 0.9)
    assert back.tolist() == [False, True, True, False]
    rep = exit_report(chosen, costs, back)
    assert rep["counts"] == [2, 2, 0] and rep["fallbacks"] == 2
    # by the documented rule: 10 + 100 + 100 + 30 MMAC over 4 samples
    assert rep["mean_mmac_per_sample"] == pytest.approx((10 + 100 + 100 + 30) / 4)
    # the former rule (charge the chosen exit) would have said (10 + 30 + 10 + 30) / 4
    assert exit_report(chosen, costs)["mean_mmac_per_sample"] == pytest.approx(20.0)
