"""Progress reports: Task.train reports every step; nothing is reported without a listener."""
from __future__ import annotations

from effdl.core import progress
from effdl.zoo import build


def test_train_reports_each_step_to_the_listener(digits_task):
    seen = []
    model = build("mlp", input_shape=digits_task.input_shape, num_classes=10, hidden=(16,))
    task = digits_task.with_model(model)
    with progress.listening(lambda stage, done, total: seen.append((stage, done, total))):
        task.train(model, steps=5, lr=1e-3)
    assert seen == [("train", i, 5) for i in range(1, 6)]
    progress.report("train", 1, 1)  # no listener: a no-op, no error
    assert len(seen) == 5


def test_stage_timer_adds_seconds_per_stage():
    timer = progress.StageTimer()
    for _ in range(2):
        with timer.stage("apply"):
            pass
    with timer.stage("evaluate"):
        pass
    assert set(timer.seconds) == {"apply", "evaluate"} and all(v >= 0 for v in timer.seconds.values())


def test_report_lists_each_candidates_time_by_stage():
    from effdl.pipeline.results import Candidate
    from effdl.report.table import _stages

    c = Candidate(id="c01", label="x", recipe=[], status="ok",
                  stage_seconds={"apply": 2.0, "measure ort": 3.5, "evaluate": 0.25})
    html = _stages(c)
    assert "time: 5.8 s" in html  # 2.0 + 3.5 + 0.25, one decimal
    assert html.index("measure ort 3.5 s") < html.index("apply 2.0 s") < html.index("evaluate 0.2 s")
    assert _stages(Candidate(id="c02", label="y", recipe=[], status="failed")) == ""
