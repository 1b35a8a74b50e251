from effdl.pipeline.optimize import choose
from effdl.pipeline.pareto import pareto_front
from effdl.pipeline.results import Candidate, Footprint, Goal


def test_front_hand_computed():
    pts = [("a", 0.99, 10.0), ("b", 0.98, 5.0), ("c", 0.97, 6.0), ("d", 0.99, 12.0), ("e", 0.90, 1.0)]
    # c is dominated by b (better and cheaper); d by a (same quality, costlier); e is cheapest.
    assert pareto_front(pts) == ["e", "b", "a"]


def test_front_of_a_lower_is_better_metric():
    # perplexity: 10 is better than 12. c (13, 6) is dominated by b (12, 5); d (10, 12) by a (10, 10);
    # e is the cheapest. Read as higher-is-better the same points give a different front.
    pts = [("a", 10.0, 10.0), ("b", 12.0, 5.0), ("c", 13.0, 6.0), ("d", 10.0, 12.0), ("e", 20.0, 1.0)]
    assert pareto_front(pts, higher_is_better=False) == ["e", "b", "a"]
    assert pareto_front(pts) == ["e"]  # read as higher-is-better, e (20, cost 1) would dominate every other point


def test_duplicates_both_stay():
    assert pareto_front([("a", 0.9, 1.0), ("b", 0.9, 1.0)]) == ["a", "b"]


def _cand(cid, acc, lat, size, p90=None):
    return Candidate(id=cid, label=cid, status="ok", quality_val={"accuracy": acc},
                     footprint=Footprint(latency_ms_p50=lat, latency_ms_p90=p90 or lat, size_bytes=size))


def _goal(max_drop, target, tie):
    return Goal(metric="accuracy", higher_is_better=True, max_drop=max_drop, target=target, latency_tie=tie)


def test_choice_treats_latency_noise_as_a_tie():
    base = _cand("b", 0.98, 1.0, 100)
    cands = [base, _cand("x", 0.975, 1.03, 50), _cand("y", 0.975, 1.2, 10), _cand("z", 0.95, 0.5, 5)]
    # z is fastest but 3 points worse (infeasible); x is within 5% of b's latency and half its size
    chosen, why = choose(cands, base, _goal(0.01, "latency", 0.05))
    assert chosen == "x" and "within the noise" in why
    assert "within 1.00 points of the baseline's validation accuracy (its drop: 0.50 points)" in why
    chosen, _ = choose(cands, base, _goal(0.01, "latency", 0.0))
    assert chosen == "b"
    chosen, _ = choose(cands, base, _goal(0.01, "size", 0.05))
    assert chosen == "y"
    chosen, why = choose(cands, base, _goal(0.0, "size", 0.05))
    assert chosen == "b"


def test_choice_uses_the_fastest_candidates_own_spread():
    base = _cand("b", 0.98, 1.0, 100, p90=1.10)
    cands = [base, _cand("x", 0.98, 1.08, 50)]
    # 1.08 is 8% slower (outside 5%) but inside b's own p50-p90 spread (1.0-1.10): tied, x is smaller
    assert choose(cands, base, _goal(0.01, "latency", 0.05))[0] == "x"
    cands = [base, _cand("x", 0.98, 1.12, 50)]
    assert choose(cands, base, _goal(0.01, "latency", 0.05))[0] == "b"
