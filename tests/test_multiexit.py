"""Multi-exit models (issue 8): the batched exit policy on hand-made logits (A and B, no
confident exit, ties, the ``>=`` boundary), the weighted multi-exit loss against the sum of
per-exit losses, the combined per-exit curvature against an independent autograd computation
of each exit's GGN diagonal, heads on every known backbone, a tiny ``me_fairprune`` run whose
notes, candidates and masks are checked, bad input through the CLI, and ``check_method``
conformance of ``me_vanilla`` and ``me_fairprune``.

Default values of the methods' parameters are never asserted; every run sets what it uses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from dataset_helpers import assert_cli_error

from fairbench.cli.main import main
from fairbench.data.loaders import Batch
from fairbench.models.backbones import create_backbone
from fairbench.models.multiexit import (
    KNOWN_STAGES,
    MultiExit,
    exit_costs,
    exit_policy,
    exit_report,
    multi_exit_loss,
    pooled_size,
    resolve_exit_spec,
)
from fairbench.run.multiexit import MultiExitParams
from fairbench.training.multiexit import exit_loss, multi_exit_curvature, per_exit_curvature

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]
FAST_PRUNE = {"estimator": "ggn_exact", "score_samples": "8", "score_batch_size": "8",
              "ratio": "0.05", "beta_grid": "0.5,1.0", "mode": "oneshot",
              "finetune_epochs": "0", "tau_grid": "0.5,0.9", "policy": "A"}


def as_args(params: dict[str, str]) -> list[str]:
    return [a for k, v in params.items() for a in ("--param", f"{k}={v}")]


def invoke(method: str, runs: Path, cache: Path, params: dict[str, str], *extra: str):
    return CliRunner().invoke(main, ["run", "--method", method, *TINY, "--runs-dir", str(runs),
                                     "--cache-dir", str(cache), *as_args(params), *extra])




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


# -- loss ------------------------------------------------------------------------------------------
def test_weighted_loss_is_the_sum_of_per_exit_losses():
    model = tiny_model(width=4).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    torch.manual_seed(1)
    exits = model.exits(x)
    total = multi_exit_loss(exits, y, model.exit_weights)
    separate = [F.cross_entropy(e, y) for e in exits]
    expected = sum(w * s for w, s in zip(model.exit_weights, separate))
    assert torch.allclose(total, expected)
    assert torch.allclose(multi_exit_loss(exits, y, (1.0,) * 5), sum(separate))
    # the trainer's hook reads the model's weights and gives the same value
    batch = Batch(x=x, y=y, g=None, index=torch.arange(8))
    model.eval()  # BatchNorm: the same statistics for both evaluations
    with torch.no_grad():
        assert torch.allclose(exit_loss(model, batch, None),
                              multi_exit_loss(model.exits(x), y, model.exit_weights))
    with pytest.raises(ValueError, match="weights"):
        multi_exit_loss(exits, y, (1.0, 1.0))


# -- curvature -------------------------------------------------------------------------------------
def ggn_diag_autograd(model: MultiExit, k: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact GGN diagonal of the batch-mean CE of exit ``k`` from per-(sample, class) Jacobian
    rows: (1/B) Σ_n Σ_{c,c'} J_nc H_n,cc' J_nc' with H_n = diag(p_n) − p_n p_nᵀ."""
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    names = list(params)
    out = model.exits(x)[k]
    probs = torch.softmax(out.detach(), dim=1)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    b, c = out.shape
    for i in range(b):
        rows = [torch.autograd.grad(out[i, j], list(params.values()), retain_graph=True,
                                    allow_unused=True) for j in range(c)]
        h = torch.diag(probs[i]) - torch.outer(probs[i], probs[i])
        for t, n in enumerate(names):
            if rows[0][t] is None:
                continue  # exit k does not reach this parameter
            jac = torch.stack([r[t] for r in rows])  # C × shape
            acc[n] += torch.einsum("c...,cd,d...->...", jac, h, jac) / b
    return acc


def test_combined_curvature_is_the_weighted_sum_of_per_exit_curvatures():
    model = tiny_model(weights=(0.5, 1.0, 0.0, 2.0, 1.5)).eval()
    torch.manual_seed(3)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
    batches = [Batch(x=x, y=y, g=None, index=torch.arange(4))]
    combined = multi_exit_curvature(model, batches, estimator="ggn_exact", scope="conv_linear")
    per_exit = per_exit_curvature(model, batches, estimator="ggn_exact", scope="conv_linear")
    assert per_exit[2] == {}  # weight 0: skipped
    assert set(per_exit[0]) == {n for n in combined
                                if n.startswith("heads.0.") or n in ("backbone.body.0.weight",)}
    expected = {n: torch.zeros_like(v) for n, v in combined.items()}
    for k, w in enumerate(model.exit_weights):
        if w == 0:
            continue
        brute = ggn_diag_autograd(model, k, x)
        for n, v in per_exit[k].items():  # BackPACK per exit = autograd per exit
            torch.testing.assert_close(v, brute[n], rtol=1e-4, atol=1e-7)
        for n in expected:
            expected[n] += w * brute[n]
    assert any(n.startswith("heads.") for n in combined)  # heads are scored too
    assert "backbone.classifier.weight" in combined
    for n, v in combined.items():
        torch.testing.assert_close(v, expected[n], rtol=1e-4, atol=1e-7)
    # the unused head (weight 0) gets no curvature, and the model is unchanged (a copy is used)
    assert all(float(v.abs().sum()) == 0 for n, v in combined.items() if n.startswith("heads.2."))
    assert not any(hasattr(p, "diag_ggn_exact") for p in model.parameters())


# -- a tiny me_fairprune run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("me")
    runs, cache = root / "runs", root / "cache"
    result = invoke("me_fairprune", runs, cache, FAST_PRUNE, "--save-weights")
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (runs / "synthderm" / "me_fairprune").iterdir() if p.is_dir()]
    return {"runs": runs, "cache": cache, "run_dir": run_dir,
            "config": json.loads((run_dir / "config.json").read_text())}


def test_me_fairprune_notes_candidates_and_masks(pruned):
    notes = pruned["config"]["notes"]
    me, ex = notes["me_fairprune"], notes["multiexit"]
    assert me["chosen_beta"] in (0.5, 1.0) and me["chosen_tau"] in (0.5, 0.9)
    assert ex["tau"] == pytest.approx(me["chosen_tau"], abs=1e-6)
    assert ex["stages"] == list(KNOWN_STAGES["smallcnn"]) and len(ex["mmac_per_exit"]) == 5
    sizes = pruned["config"]["split_sizes"]
    for part in ("val", "test"):
        rep = ex[part]
        assert sum(rep["counts"]) == sizes[part] and len(rep["counts"]) == 5
        assert min(ex["mmac_per_exit"]) <= rep["mean_mmac_per_sample"] <= max(ex["mmac_per_exit"])
    with (pruned["run_dir"] / "prune.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2  # β × τ (one ratio)
    # heads are pruned too: every conv/linear weight of the whole network lost ~5 %
    ratios = me["realized_ratio_per_tensor"]
    assert any(n.startswith("heads.") for n in ratios)
    assert all(0.04 <= r <= 0.2 for r in ratios.values()), ratios
    state = torch.load(pruned["run_dir"] / "weights.pt", weights_only=True)
    for n, r in ratios.items():
        assert float((state[n] == 0).float().mean()) >= r - 1e-6
    assert float(state["tau"]) == pytest.approx(me["chosen_tau"], abs=1e-6)
    # the trained multi-exit model is cached and shared with me_vanilla
    assert len(list((pruned["runs"] / "_me_vanilla").glob("*/model.pt"))) == 1
    result = invoke("me_vanilla", pruned["runs"], pruned["cache"],
                    {"tau_grid": "0.5,0.9", "policy": "A"})
    assert result.exit_code == 0, result.output
    assert len(list((pruned["runs"] / "_me_vanilla").glob("*/model.pt"))) == 1


# -- bad input -------------------------------------------------------------------------------------
BAD = {
    "tau above one": ("me_vanilla", {"tau": "1.5"}, [], ["tau", "(0, 1]"]),
    "tau zero": ("me_fairprune", {"tau": "0"}, [], ["tau", "(0, 1]"]),
    "tau grid outside": ("me_vanilla", {"tau_grid": "0.9,1.2"}, [], ["tau_grid", "1.2"]),
    "empty tau grid": ("me_vanilla", {"tau_grid": ""}, [], ["tau_grid"]),
    "unknown policy": ("me_vanilla", {"policy": "C"}, [], ["policy", "A, B"]),
    "negative weight": ("me_fairprune", {"exit_weights": "1,1,-1,1,1"}, [], ["exit_weights"]),
    "weights do not match the exits": ("me_vanilla", {"exit_weights": "1,1"}, [],
                                       ["exit_weights", "2 values", "5 exits", "give 5"]),
    "no stage list": ("me_fairprune", {}, ["--backbone", "timm:resnet10t"],
                      ["no known stage list", "stages="]),
    "unknown stage": ("me_vanilla", {"stages": "body.3,body.77"}, [],
                      ["body.77", "not a module"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_before_training(case, tmp_path, tiny_cache):
    method, params, extra, fragments = BAD[case]
    runs = tmp_path / "runs"
    result = invoke(method, runs, tiny_cache, params, *extra)
    assert_cli_error(result, *fragments)
    assert not (runs / "_me_vanilla").exists() and not (runs / "_vanilla").exists()


# -- conformance -----------------------------------------------------------------------------------
def test_check_method_me_vanilla(tmp_path):
    from fairbench.testing import check_method

    metrics = check_method("me_vanilla", tmp_path, params={"tau_grid": (0.5, 0.9)})
    assert {"val", "test", "meta"} <= set(metrics)


def test_check_method_me_fairprune(tmp_path):
    from fairbench.testing import check_method

    metrics = check_method("me_fairprune", tmp_path, params={
        "estimator": "fisher", "score_samples": 8, "score_batch_size": 8, "ratio": 0.05,
        "beta_grid": (), "beta": 0.5, "tau_grid": (0.5, 0.9)})
    assert {"val", "test", "meta"} <= set(metrics)
