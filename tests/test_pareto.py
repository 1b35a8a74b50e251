from effdl.pipeline.pareto import pareto_front


def test_front_hand_computed():
    pts = [("a", 0.99, 10.0), ("b", 0.98, 5.0), ("c", 0.97, 6.0), ("d", 0.99, 12.0), ("e", 0.90, 1.0)]
    # c is dominated by b (better and cheaper); d by a (same quality, costlier); e is cheapest.
    assert pareto_front(pts) == ["e", "b", "a"]


def test_duplicates_both_stay():
    assert pareto_front([("a", 0.9, 1.0), ("b", 0.9, 1.0)]) == ["a", "b"]


def _cand(cid, acc, lat, size, p90=None):
    return {"id": cid, "status": "ok", "quality_val": {"accuracy": acc},
            "footprint": {"latency_ms_p50": lat, "latency_ms_p90": p90 or lat, "size_bytes": size}}


def test_choice_treats_latency_noise_as_a_tie():
    from effdl.pipeline.optimize import _choose

    base = _cand("b", 0.98, 1.0, 100)
    cands = [base, _cand("x", 0.975, 1.03, 50), _cand("y", 0.975, 1.2, 10), _cand("z", 0.95, 0.5, 5)]
    # z is fastest but 3 points worse (infeasible); x is within 5% of b's latency and half its size
    chosen, why = _choose(cands, base, "accuracy", 0.01, "latency", 0.05)
    assert chosen == "x" and "within the noise" in why
    chosen, _ = _choose(cands, base, "accuracy", 0.01, "latency", 0.0)
    assert chosen == "b"
    chosen, _ = _choose(cands, base, "accuracy", 0.01, "size", 0.05)
    assert chosen == "y"
    chosen, why = _choose(cands, base, "accuracy", 0.0, "size", 0.05)
    assert chosen == "b"


def test_choice_uses_the_fastest_candidates_own_spread():
    from effdl.pipeline.optimize import _choose

    base = _cand("b", 0.98, 1.0, 100, p90=1.10)
    cands = [base, _cand("x", 0.98, 1.08, 50)]
    # 1.08 is 8% slower (outside 5%) but inside b's own p50-p90 spread (1.0-1.10): tied, x is smaller
    assert _choose(cands, base, "accuracy", 0.01, "latency", 0.05)[0] == "x"
    cands = [base, _cand("x", 0.98, 1.12, 50)]
    assert _choose(cands, base, "accuracy", 0.01, "latency", 0.05)[0] == "b"
