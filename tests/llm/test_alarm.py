"""llm.alarm: the squeeze rule fires on a squeezing curve, stays quiet on SFT and healthy DPO; engine wiring."""

import logging

import pytest

from llm.alarm import SqueezeMonitor, SqueezeRule, dashboard_metrics, squeeze_evidence


def _means(chosen, rejected, argmax, peakiness=0.1):
    return {("chosen", "logp_sum"): chosen, ("rejected", "logp_sum"): rejected,
            ("argmax_teacher_forced", "logp_sum"): argmax, ("chosen", "peakiness"): peakiness}


def _feed(curve, rule=None):
    monitor = SqueezeMonitor(rule or SqueezeRule())
    events = [monitor.update(10 * k, 40 * k, m) for k, m in enumerate(curve)]
    return monitor, events


# DPO after SFT as in the paper's Figure (PAPER.md section 8): y+ rises a little, then falls with y-; argmax rises.
SQUEEZE = [_means(-54.4, -106.5, -30.0), _means(-54.0, -110.0, -29.8), _means(-54.9, -140.0, -27.0),
           _means(-60.0, -190.0, -22.0), _means(-80.0, -260.0, -18.0), _means(-113.3, -325.3, -15.4)]
# SFT on y+ (section 8): y+ up, y- up to a peak then down, argmax up: y+ never falls, so no alarm.
SFT = [_means(-122.8, -97.2, -49.5), _means(-100.0, -90.0, -45.0), _means(-80.0, -87.1, -40.0),
       _means(-65.0, -95.0, -35.0), _means(-56.4, -105.2, -30.8)]


def test_fires_on_a_squeezing_curve_with_its_evidence(caplog):
    with caplog.at_level(logging.WARNING, logger="llm.alarm"):
        monitor, events = _feed(SQUEEZE)
    fired = [k for k, e in enumerate(events) if e is not None]
    assert fired == [3]  # y+ 6 nats below its peak (step 10), argmax +7.8, y- at its lowest: the first such point
    event = events[3]
    assert event.step == 30 and event.examples_seen == 120 and event.action == "warn"
    assert event.evidence["peak_step"] == 10 and event.evidence["chosen_drop"] == pytest.approx(6.0)
    assert event.evidence["argmax_rise"] == pytest.approx(7.8) and event.evidence["rejected_drop"] == pytest.approx(80.0)
    assert "squeeze alarm at step 30" in caplog.text and "y+ fell -54.00 -> -60.00" in caplog.text
    assert monitor.fired is event  # fires once
    row = monitor.row(event, "dpo")
    assert row["squeeze/alarm"] == 1.0 and row["squeeze/chosen_drop"] == pytest.approx(6.0) and row["step"] == 30


def test_quiet_on_an_sft_curve():
    monitor, events = _feed(SFT)
    assert events == [None] * len(SFT) and monitor.fired is None


@pytest.mark.parametrize("curve, why", [
    ([_means(-50, -60, -30), _means(-40, -90, -25), _means(-35, -150, -20)], "y+ rises (healthy DPO)"),
    ([_means(-50, -60, -30), _means(-55, -50, -25), _means(-60, -45, -20)], "y- rises, not in a valley"),
    ([_means(-50, -60, -30), _means(-55, -80, -30.2), _means(-60, -120, -30.4)], "argmax and peakiness flat"),
    ([_means(-50, -60, -30), _means(-50.5, -80, -28), _means(-60, -70, -26)], "y- left its valley"),
])
def test_quiet_when_a_condition_fails(curve, why):
    assert _feed(curve)[0].fired is None, why


def test_peakiness_alone_counts_as_the_rise():
    curve = [_means(-50, -60, -30, 0.10), _means(-55, -80, -30.1, 0.20)]
    monitor, events = _feed(curve)
    assert events[1] is not None and events[1].evidence["peakier"] == 1.0 and events[1].evidence["argmax_rose"] == 0.0
    assert squeeze_evidence([(0, curve[0]), (1, curve[1])], SqueezeRule(min_peakiness_rise=0.5)) is None


def test_rule_and_dashboard_names():
    with pytest.raises(ValueError, match="action"):
        SqueezeRule(action="explode")
    with pytest.raises(ValueError, match="> 0"):
        SqueezeRule(min_drop=0)
    names = dashboard_metrics(SQUEEZE[0])
    assert names["logps/probe_chosen"] == -54.4 and names["logps/probe_argmax_teacher_forced"] == -30.0
    assert names["probes/chosen_peakiness"] == 0.1 and all(k.split("/")[0] in ("logps", "probes") for k in names)


def _run(tmp_path, name, **kw):
    from llm.config import TrainConfig
    from llm.training import train

    base = dict(loss="dpo", num_synthetic=16, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300,
                batch_size=4, max_prompt_tokens=32, max_response_tokens=16, lr=3e-2, progress=False,
                save_model=False, epochs=6, eval_every=8, out_dir=str(tmp_path / name))
    return train(TrainConfig(**{**base, **kw}))


def test_engine_alarm_row_equals_the_rule_on_its_own_probe_rows_and_stop_ends_the_run(tmp_path):
    from toykit.runs import read_metrics

    warned = _run(tmp_path, "warn", squeeze_alarm="warn")
    rows = read_metrics(warned.run_dir / "metrics.jsonl")
    alarms = [r for r in rows if "squeeze/alarm" in r]
    history = {}
    for r in rows:
        if "probe" in r:
            history.setdefault(r["step"], {})[(r["probe"], r["statistic"])] = r["value"]
    steps = sorted(history)
    first = next(k for k in range(len(steps)) if squeeze_evidence([(s, history[s]) for s in steps[:k + 1]],
                                                                  SqueezeRule()) is not None)
    assert len(alarms) == 1 and alarms[0]["step"] == steps[first]  # fires once, at the rule's first hit
    assert warned.status == "completed" and warned.summary["squeeze_alarm"]["step"] == steps[first]

    stopped = _run(tmp_path, "stop", squeeze_alarm="stop")
    assert stopped.status == "stopped_by_squeeze_alarm" and stopped.step == steps[first]
    assert (stopped.run_dir / "checkpoint.pt").exists()
    resumed = _run(tmp_path, "stop", squeeze_alarm="off", resume=True)  # the alarm mode may change on resume
    assert resumed.status == "completed" and resumed.step == warned.step


def test_engine_alarm_is_quiet_on_sft(tmp_path):
    from toykit.runs import read_metrics

    result = _run(tmp_path, "sft", loss="sft", lr=3e-3, squeeze_alarm="stop")
    assert result.status == "completed" and "squeeze_alarm" not in result.summary
    assert not [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "squeeze/alarm" in r]
