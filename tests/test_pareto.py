from effdl.pipeline.pareto import pareto_front


def test_front_hand_computed():
    pts = [("a", 0.99, 10.0), ("b", 0.98, 5.0), ("c", 0.97, 6.0), ("d", 0.99, 12.0), ("e", 0.90, 1.0)]
    # c is dominated by b (better and cheaper); d by a (same quality, costlier); e is cheapest.
    assert pareto_front(pts) == ["e", "b", "a"]


def test_duplicates_both_stay():
    assert pareto_front([("a", 0.9, 1.0), ("b", 0.9, 1.0)]) == ["a", "b"]
