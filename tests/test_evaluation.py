"""Evaluation reports: figures against a hand-computed case, the real router, JSON, PNG."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    InvalidInputError,
    MissingDependencyError,
    Route,
    RouteMatch,
)
from synaptoroute.evaluation import HEADLINE_FIGURES, EvaluationReport, evaluate_matches

ROUTES = ["billing", "support", "weather"]


def match(name: str | None, candidate: str, score: float) -> RouteMatch:
    return RouteMatch(
        name=name,
        score=score,
        candidate=candidate,
        threshold=0.5,
        reason="matched" if name else "below_threshold",
    )


@pytest.fixture
def hand_case() -> EvaluationReport:
    """Ten rows, worked out by hand below."""
    labels: list[str | None] = [
        "billing", "billing", "billing", "support", "support",
        "weather", None, None, None, "weather",
    ]  # fmt: skip
    matches = [
        match("billing", "billing", 0.9),  # right
        match("billing", "billing", 0.8),  # right
        match("support", "support", 0.7),  # billing -> support
        match("support", "support", 0.9),  # right
        match(None, "support", 0.4),  # support rejected
        match("weather", "weather", 0.95),  # right
        match(None, "billing", 0.3),  # out of scope, rejected: right
        match(None, "weather", 0.2),  # right
        match("billing", "billing", 0.6),  # out of scope -> billing
        match("billing", "billing", 0.55),  # weather -> billing
    ]
    texts = [f"text {i}" for i in range(10)]
    return evaluate_matches(texts, labels, matches, ROUTES)


def test_figures_match_a_hand_computed_case(hand_case: EvaluationReport) -> None:
    f = hand_case.figures
    assert (f.rows, f.in_scope, f.out_of_scope) == (10, 7, 3)
    assert f.accuracy == pytest.approx(6 / 10)  # rows 0, 1, 3, 5, 6, 7
    assert f.in_scope_accuracy == pytest.approx(4 / 7)
    # Predicted "none": rows 4, 6, 7, of which 6 and 7 are out of scope.
    assert f.oos_precision == pytest.approx(2 / 3)
    assert f.oos_recall == pytest.approx(2 / 3)
    assert f.oos_f1 == pytest.approx(2 / 3)
    # billing: tp 2, predicted 4 (rows 0, 1, 8, 9), support 3 -> P 1/2, R 2/3, F1 4/7
    # support: tp 1, predicted 2 (rows 2, 3), support 2 -> P 1/2, R 1/2, F1 1/2
    # weather: tp 1, predicted 1, support 2 -> P 1, R 1/2, F1 2/3
    billing = hand_case.per_route["billing"]
    assert (billing.precision, billing.recall, billing.f1) == pytest.approx((1 / 2, 2 / 3, 4 / 7))
    assert (billing.support, billing.predicted) == (3, 4)
    assert hand_case.per_route["support"].f1 == pytest.approx(1 / 2)
    assert hand_case.per_route["weather"].precision == 1.0
    assert hand_case.per_route["weather"].recall == pytest.approx(1 / 2)
    assert f.macro_f1 == pytest.approx((4 / 7 + 1 / 2 + 2 / 3) / 3)
    pairs = {(p.label, p.predicted): p.count for p in hand_case.confused_pairs}
    assert pairs == {
        ("billing", "support"): 1,
        ("support", None): 1,
        (None, "billing"): 1,
        ("weather", "billing"): 1,
    }
    assert [m.index for m in hand_case.misrouted] == [2, 4, 8, 9]
    wrong = hand_case.misrouted[1]
    assert (wrong.label, wrong.predicted, wrong.candidate, wrong.score) == (
        "support",
        None,
        "support",
        0.4,
    )
    assert hand_case.confusion.sum() == 10
    assert hand_case.confusion[3, 3] == 2  # out of scope, rejected


def test_report_json_and_text(hand_case: EvaluationReport) -> None:
    data = json.loads(hand_case.to_json())
    assert data["accuracy"] == pytest.approx(0.6)
    assert data["per_route"]["billing"]["support"] == 3
    assert data["confused_pairs"][0]["count"] == 1
    assert data["misrouted"][0]["text"] == "text 2"
    assert "oos_recall" in str(hand_case)


def test_plot_writes_a_png(hand_case: EvaluationReport, tmp_path: Path) -> None:
    out = hand_case.plot(tmp_path / "report.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_plot_without_matplotlib_names_the_extra(
    hand_case: EvaluationReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(
        MissingDependencyError, match=r"pip install '\.\[plot\]' in a checkout of https://"
    ):
        hand_case.plot(tmp_path / "report.png")
    assert not (tmp_path / "report.png").exists()


def test_evaluate_real_router(
    encoder: Encoder,
    clinc_train: list[dict[str, str | None]],
    clinc_val: list[dict[str, str | None]],
) -> None:
    by_label: dict[str, list[str]] = defaultdict(list)
    for row in clinc_train:
        if row["label"] is not None:
            by_label[row["label"]].append(str(row["text"]))
    router = AdaptiveRouter(encoder, threshold=0.45)
    router.add_routes(Route(name=k, utterances=v) for k, v in by_label.items())
    texts = [str(r["text"]) for r in clinc_val]
    labels = [r["label"] for r in clinc_val]

    report = router.evaluate(texts, labels)

    # The same figures as the router's own answers give.
    again = evaluate_matches(texts, labels, router.query_batch(texts), router.route_names)
    assert report.figures == again.figures
    assert report.in_scope_accuracy is not None and report.in_scope_accuracy > 0.8
    assert report.oos_recall is not None and report.oos_recall > 0.5
    assert set(report.per_route) == set(by_label)
    for wrong in report.misrouted:
        assert wrong.predicted != wrong.label
        assert wrong.text == texts[wrong.index]
    with pytest.raises(InvalidInputError, match="no_such_route"):
        router.evaluate(texts[:2], ["no_such_route", None])
    assert (report.cut, report.cut_on) == (0.45, "score")
    # A route with a threshold of its own: the default one was reported (and marked)
    # as the router's cut, where the router does not work.
    router.set_threshold(next(iter(by_label)), 0.9)
    own = router.evaluate(texts, labels)
    assert own.cut is None and own.in_scope_accuracy != report.in_scope_accuracy
    assert own.oos_recall is not None and own.in_scope_accuracy is not None
    assert marker(own) == [(own.oos_recall, own.in_scope_accuracy)]


def test_oos_f1_is_zero_when_no_row_was_rejected() -> None:
    # Out-of-scope rows exist but every row was routed: F1 = 2 TP / (2 TP + FP + FN) = 0
    # (oos_precision has no rejected row to divide by and stays None).
    matches = [match("billing", "billing", 0.8), match("billing", "billing", 0.6)]
    report = evaluate_matches(["a", "b"], ["billing", None], matches, ROUTES)
    assert report.figures.oos_precision is None
    assert report.figures.oos_recall == 0.0
    assert report.figures.oos_f1 == 0.0
    assert "oos_f1             0.0000" in str(report)
    # Without out-of-scope rows it stays undefined.
    alone = evaluate_matches(["a"], ["billing"], matches[:1], ROUTES)
    assert alone.figures.oos_f1 is None


def test_the_report_reads_every_headline_figure_as_an_attribute(
    hand_case: EvaluationReport,
) -> None:
    # docs/accuracy.md lists these as EvaluationReport's own attributes.
    f = hand_case.figures
    documented = {"accuracy", "in_scope_accuracy", "oos_precision", "oos_recall", "oos_f1"}
    assert set(HEADLINE_FIGURES) == documented | {"macro_f1"}
    for name in HEADLINE_FIGURES:
        assert getattr(hand_case, name) == getattr(f, name), name
    assert (hand_case.oos_precision, hand_case.oos_f1) == pytest.approx((2 / 3, 2 / 3))
    matches = [match("billing", "billing", 0.8), match("billing", "billing", 0.6)]
    none_rejected = evaluate_matches(["a", "b"], ["billing", None], matches, ROUTES)
    assert none_rejected.oos_precision is None
    assert none_rejected.oos_f1 == 0.0


def marker(report: EvaluationReport) -> list[tuple[float, float]]:
    """The (out-of-scope recall, in-scope accuracy) points the plot marks as the cut."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    report._plot_curve(ax)
    return [(float(x), float(y)) for c in ax.collections for x, y in c.get_offsets()]


def test_a_cut_above_every_score_marks_the_end_that_routes_nothing() -> None:
    # The router's threshold 0.9 routes nothing; the marker sat on the highest score
    # (0.8), a point where the in-scope row is routed (in-scope accuracy 1).
    matches = [match(None, "billing", 0.8), match(None, "billing", 0.3)]
    report = evaluate_matches(["a", "b"], ["billing", None], matches, ROUTES)
    report.cut, report.cut_on = 0.9, "score"
    cuts, in_acc, recall = report.oos_curve()
    assert cuts.tolist() == [0.3, 0.8, float("inf")]
    assert (in_acc[-1], recall[-1]) == (0.0, 1.0)
    assert report.oos_auroc == 1.0  # the curve's end changes no figure
    assert (report.in_scope_accuracy, report.oos_recall) == (0.0, 1.0)
    assert marker(report) == [(1.0, 0.0)]


def test_the_cut_of_a_fit_without_head_is_marked_on_the_curve() -> None:
    # After a fit without a head every row has a confidence (a non-decreasing map of
    # the score, flat from 0.45 to 0.6 here) but the router cuts the score: the curve
    # was drawn on the confidence and the cut was left out.
    def fitted(name: str | None, score: float, confidence: float) -> RouteMatch:
        reason = "matched" if name else "below_threshold"
        return RouteMatch(
            name=name, score=score, candidate="billing", reason=reason, confidence=confidence
        )

    matches = [
        fitted("billing", 0.9, 0.95),
        fitted("billing", 0.6, 0.7),
        fitted(None, 0.45, 0.7),  # out of scope, below the 0.5 threshold: rejected
        fitted(None, 0.3, 0.1),
    ]
    report = evaluate_matches(list("abcd"), ["billing", "billing", None, None], matches, ROUTES)
    report.cut, report.cut_on = 0.5, "score"
    assert report.ood_on == "confidence"
    assert (report.oos_recall, report.in_scope_accuracy) == (1.0, 1.0)
    # At the router's own cut the curve gives the router's own figures.
    assert marker(report) == [(1.0, 1.0)]
    # A head's confidence cut is marked on the confidence curve, as before.
    report.cut, report.cut_on = 0.7, "confidence"
    assert marker(report) == [(0.5, 1.0)]
