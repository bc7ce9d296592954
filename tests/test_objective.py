"""The objective: the study's table reproduced, the default sign, constraints, ties, Pareto."""

import pytest
from pydantic import ValidationError

from edgeopt.errors import ConfigError
from edgeopt.objective import Candidate, Metric, Objective, pareto_front, select

# The study's table: f0..f4 sizes (KB), times (ms) and test accuracy (%).
STUDY = [
    Candidate("f0", 3200, 23, 99.18),
    Candidate("f1", 834, 47, 90.26),
    Candidate("f2", 999, 483, 99.18),
    Candidate("f3", 1000, 486, 99.08),
    Candidate("f4", 1612, 23, 99.18),
]
STUDY_L = {"f0": 0.00, "f1": 0.21, "f2": 19.31, "f3": 19.44, "f4": -0.50}


def test_paper_form_reproduces_the_studys_L_column():
    choice = select(STUDY, "f0", Objective(form="paper"))
    assert {s.name: round(s.L, 2) for s in choice.ranking} == STUDY_L
    assert choice.selected == "f4"


def test_default_form_penalises_the_accuracy_loss_and_still_picks_f4():
    choice = select(STUDY, "f0", Objective())
    f1 = choice.score_of("f1")
    # (99.18 - 90.26) / 99.18 = +0.0899: a loss raises L under the default form
    assert f1.delta_metric == pytest.approx((99.18 - 90.26) / 99.18)
    assert f1.L == pytest.approx(-0.7394 + 1.0435 + 0.0899, abs=1e-3)
    assert choice.selected == "f4"


def test_paper_and_default_differ_only_in_the_accuracy_sign():
    paper = select(STUDY, "f0", Objective(form="paper"))
    default = select(STUDY, "f0", Objective())
    for name in ("f1", "f3"):
        p, d = paper.score_of(name), default.score_of(name)
        assert p.delta_metric == pytest.approx(-d.delta_metric)
        assert p.delta_metric < 0 < d.delta_metric


def test_max_accuracy_drop_excludes_lossy_variants():
    cands = [Candidate("f0", 1000, 10, 0.90), Candidate("small", 250, 4, 0.85), Candidate("ok", 500, 6, 0.899)]
    choice = select(cands, "f0", Objective(max_metric_loss=1.0))
    assert choice.selected == "ok"
    small = choice.score_of("small")
    assert not small.eligible and "5.00 pp" in small.excluded_because
    assert any("small was excluded" in r for r in choice.reasons)
    # without the limit the lossy but much smaller variant wins, with a warning about its loss
    unguarded = select(cands, "f0", Objective())
    assert unguarded.selected == "small"
    assert any(r.startswith("Warning: small loses 5.00 pp") for r in unguarded.reasons)
    assert not any(r.startswith("Warning") for r in choice.reasons)


def test_ties_go_to_the_smaller_file():
    # same L to two decimals: -0.5 for both
    cands = [Candidate("f0", 1000, 10, 0.9), Candidate("a", 600, 9, 0.9), Candidate("b", 500, 10, 0.9)]
    choice = select(cands, "f0", Objective())
    assert round(choice.score_of("a").L, 2) == round(choice.score_of("b").L, 2)
    assert choice.selected == "b"
    assert any("tie goes to the smaller file" in r for r in choice.reasons)


def test_lower_is_better_metric_uses_the_same_code():
    mse = Metric(name="mse", higher_is_better=False, display_scale=1.0, loss_unit="")
    cands = [Candidate("f0", 1000, 10, 0.010), Candidate("q", 300, 5, 0.020), Candidate("r", 300, 5, 0.011)]
    choice = select(cands, "f0", Objective(metric=mse))
    # doubling the error costs +1.0 in L; a 10% rise only +0.1
    assert choice.score_of("q").delta_metric == pytest.approx(1.0)
    assert choice.score_of("r").delta_metric == pytest.approx(0.1)
    assert choice.selected == "r"
    assert select(cands, "f0", Objective(metric=mse, max_metric_loss=0.005)).score_of("q").eligible is False


def test_weights_scale_their_terms():
    cands = [Candidate("f0", 1000, 10, 0.9), Candidate("fast", 1000, 5, 0.9), Candidate("small", 400, 10, 0.9)]
    assert select(cands, "f0", Objective(weight_time=0.0)).selected == "small"
    assert select(cands, "f0", Objective(weight_size=0.0)).selected == "fast"


def test_pareto_front_drops_dominated_variants():
    cands = [Candidate("a", 100, 10, 0.9), Candidate("b", 200, 20, 0.8), Candidate("c", 50, 30, 0.9)]
    assert pareto_front(cands) == {"a", "c"}


@pytest.mark.parametrize("bad", [dict(form="nope"), dict(weight_size=-1), dict(max_metric_loss=-0.5)])
def test_bad_objective_settings_are_refused(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        Objective(**bad)


def test_unknown_baseline_is_a_clear_error():
    with pytest.raises(ConfigError, match="baseline 'zz'"):
        select(STUDY, "zz", Objective())
