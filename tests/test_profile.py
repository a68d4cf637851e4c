"""config.profile: the chosen steps traced with jax.profiler into the workdir, where
TensorBoard's profile plugin reads them."""
import glob
import gzip
import os

import pytest

from bt_jax import config as config_lib
from bt_jax.io import run_dir
from bt_jax import config as config_lib, train
from bt_jax.train.profile import StepTrace
from test_main import _tiny


def _traces(workdir):
    return sorted(glob.glob(os.path.join(workdir, run_dir.PROFILES, "*", "*.xplane.pb")))


@pytest.mark.slow    # a short training run traced by jax.profiler (about 45 s); `make test-slow`
def test_profile_traces_the_chosen_steps_of_the_train_step(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    c = _tiny(4)
    c.eval.enabled = False
    c.monitor.diagnostics_every_steps = 0
    c.profile.start_step, c.profile.num_steps = 2, 2
    train.train_and_evaluate(c, workdir)
    out = capsys.readouterr().out
    assert "Profiling steps 2-3 into" in out and "Profile of steps 2-3 written." in out
    traces = _traces(workdir)
    assert len(traces) == 1, os.listdir(workdir)
    data = open(traces[0], "rb").read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    assert b"jit_train_step" in data      # the jitted step's own program ran in the trace


def test_no_trace_when_off_on_other_processes_or_past_the_window(tmp_path):
    """num_steps 0 (the default), a process other than the chief, and a run resumed past
    start_step trace nothing; bad settings are one ConfigError line."""
    assert config_lib.base_config().profile.num_steps == 0
    for trace, steps in ((StepTrace(str(tmp_path), 2, 0), (1, 2, 3)),
                         (StepTrace(str(tmp_path), 2, 2, enabled=False), (1, 2, 3)),
                         (StepTrace(str(tmp_path), 2, 2), (3, 4))):       # resumed at 3
        for step in steps:
            trace.begin(step)
            assert not trace.tracing
            trace.end(step, None)
        trace.close()
    assert _traces(str(tmp_path)) == [] and not os.listdir(tmp_path)
    for start, num in ((0, 2), (3, -1)):
        bad = _tiny(2)
        bad.profile.start_step, bad.profile.num_steps = start, num
        with pytest.raises(config_lib.ConfigError, match="profile.start_step must be >= 1"):
            config_lib.validate(bad)
