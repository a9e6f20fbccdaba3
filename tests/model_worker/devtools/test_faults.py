"""Fault injection is for tests and drills: WAKERU_FAULTS alone must never arm it."""

import logging

from model_worker.devtools.faults import Faults


def test_faults_need_the_explicit_switch_and_say_so(caplog):
    caplog.set_level(logging.WARNING)
    stray = Faults.from_env({"WAKERU_FAULTS": "crash_label=💥,batch_delay_ms=300"})
    assert stray == Faults()  # inert: a member typing 💥 cannot kill this worker
    assert "is set but ignored" in caplog.text and "WAKERU_ALLOW_FAULTS=1" in caplog.text
    caplog.clear()
    armed = Faults.from_env(
        {"WAKERU_FAULTS": "crash_label=💥,batch_delay_ms=300,load_delay_ms=5", "WAKERU_ALLOW_FAULTS": "1"}
    )
    assert armed == Faults(crash_label="💥", batch_delay_ms=300.0, load_delay_ms=5.0)
    assert "fault injection is ON" in caplog.text
    assert Faults.from_env({"WAKERU_FAULTS": "crash_label=x", "WAKERU_ALLOW_FAULTS": "yes"}) == Faults()
    assert Faults.from_env({}) == Faults()
