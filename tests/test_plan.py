"""The pod planner (`python -m bt_jax.plan`): HLO collectives, the roofline, the batch
search, every bad input's one line, the local plan against a measured step, and (slow)
a real XLA:TPU compile through libtpu for a 4-chip v5e slice."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from bt_jax import config as config_lib
from bt_jax.errors import ConfigError
from bt_jax.plan import chips, hlo, planner, report
from bt_jax.plan.compile import RunShape, compile_run, parse_out_of_memory, run_shape
from batches import config_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HLO = """
%fused_computation.34 (param_0.114: f32[16,8]) -> (f32[16,8], f32[64,8], s32[2], u32[], u32[]) {
  %all-gather.2 = f32[64,8]{1,0} all-gather(%param_0.114), replica_groups={{0,1,2,3}}, dimensions={0}
}
%async_collective_fusion.18 (param_0.117: f32[16,8], param_1.156: f32[64,8], param_2.139: s32[2], param_3.103: u32[]) -> (f32[64,8], s32[2]) {
  %all-gather.3 = f32[64,8]{1,0} all-gather(%param_0.117), replica_groups={{0,1,2,3}}, dimensions={0}
}
%fused_computation.36 (param_0.118: f32[16,8], param_1.157: f32[64,8], param_2.141: s32[2], param_3.105: u32[]) -> f32[64,8] {
  %all-gather.4 = f32[64,8]{1,0} all-gather(%param_0.118), replica_groups={{0,1,2,3}}, dimensions={0}
}
ENTRY %main (p: f32[16,256]) -> f32[] {
  %all-gather.9 = f32[64,256]{1,0:T(8,128)} all-gather(%param_0.6302), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}, metadata={op_name="jit(call)/shard_map/jvp()/all_gather"}
  %all-reduce.90 = (f32[3,3,3,64]{3,2,1,0:T(4,128)S(1)}, bf16[128]{0}, /*index=2*/f32[]{:T(128)}) all-reduce(%a, %b, %c), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%r, metadata={op_name="jit(call)/shard_map/transpose(jvp(BarlowTwins))/backbone/bn1/psum_invariant"}
  %reduce_scatter.14 = f32[16,256]{1,0:T(8,128)} reduce-scatter(%fusion.422), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%r2, metadata={op_name="jit(call)/shard_map/transpose(jvp())/reduce_scatter"}
  %ags = (f32[16,8]{1,0}, f32[64,8]{1,0}) all-gather-start(%x), replica_groups={{0,1,2,3}}, dimensions={0}
  %agd = f32[64,8]{1,0} all-gather-done(%ags)
  ROOT %cp = f32[10]{0} collective-permute(%y), source_target_pairs={{0,1},{1,0}}
}
"""


def test_collectives_are_read_with_shapes_bytes_groups_and_pass():
    items = {c.name: c for c in hlo.collectives(HLO, num_devices=8)}
    # the async chain (start, continuation, done fusions) is one all-gather: the start's
    assert sorted(items) == ["ags", "all-gather.2", "all-gather.9", "all-reduce.90", "cp",
                             "reduce_scatter.14"]
    ag, ar, rs = items["all-gather.9"], items["all-reduce.90"], items["reduce_scatter.14"]
    assert (ag.kind, ag.shapes, ag.bytes, ag.group_size) == (
        "all-gather", ("f32[64,256]",), 64 * 256 * 4, 4)
    assert ar.shapes == ("f32[3,3,3,64]", "bf16[128]", "f32[]")
    assert ar.bytes == 3 * 3 * 3 * 64 * 4 + 128 * 2 + 4 and ar.backward and not ag.backward
    assert rs.group_size == 4 and rs.replica_groups == "[2,4]<=[8]"
    assert ag.operand_shapes == ("f32[16,256]",) and rs.operand_shapes == ("f32[64,256]",)
    assert ar.operand_shapes == ar.shapes
    assert items["ags"].shapes == ("f32[64,8]",)           # the output half of the start op
    assert items["cp"].group_size == 8                       # no groups: every device
    # ring estimates: all-reduce 2(n-1)/n, all-gather (n-1)/n of the result,
    # reduce-scatter (n-1) results, permute its size
    assert ar.wire_bytes == pytest.approx(2 * 3 / 4 * ar.bytes)
    assert ag.wire_bytes == pytest.approx(3 / 4 * ag.bytes)
    assert rs.wire_bytes == pytest.approx(3 * rs.bytes)
    assert items["cp"].wire_bytes == 40
    s = hlo.summarize(list(items.values()))
    assert s["count"] == 6 and s["by_kind"]["all-gather"]["count"] == 3
    assert s["backward_all_reduce_bytes"] == ar.bytes


def _program(flops, nbytes, wire):
    return {"flops": flops, "bytes_accessed": nbytes,
            "collective_summary": {"wire_bytes": wire}}


def test_roofline_is_the_larger_bound_plus_communication():
    chip = chips.Chip("test", bf16_flops=100e12, hbm_bytes=16e9, hbm_bandwidth=1e12,
                      ici_bandwidth=100e9, source="test")
    compute_bound = _program(2e12, 1e9, 1e9)           # 20 ms compute, 1 ms memory, 10 ms comm
    memory_bound = _program(1e12, 50e9, 0)            # 10 ms compute, 50 ms memory
    est = report.step_estimate([compute_bound, memory_bound], chip, per_device_batch=128,
                               num_devices=16, epoch_examples=1_281_167)
    a, b = est["programs"]
    assert a["bound"] == "compute" and a["seconds"] == pytest.approx(0.020 + 0.010)
    assert b["bound"] == "memory" and b["seconds"] == pytest.approx(0.050)
    assert est["step_seconds"] == pytest.approx(0.080)
    assert est["pairs_per_second_per_chip"] == pytest.approx(128 / 0.080)
    hours = 1_281_167 / (128 / 0.080 * 16) / 3600
    assert est["hours_per_epoch"] == pytest.approx(hours)
    assert est["days_per_1000_epochs"] == pytest.approx(hours * 1000 / 24)
    assert "estimate" in est["label"] and "not a measurement" in est["label"]


def test_published_chip_figures_have_sources():
    assert set(chips.TPU_CHIPS) == {"v4", "v5e", "v5p", "v6e"}
    for chip in chips.TPU_CHIPS.values():
        assert chip.bf16_flops > 1e14 and chip.hbm_bytes >= 16 * 2 ** 30
        assert "cloud.google.com/tpu/docs" in chip.source


def test_unknown_topology_names_the_known_ones():
    with pytest.raises(ConfigError) as e:
        chips.parse_topology("v9x:4x4")
    assert "'v9x:4x4'" in str(e.value) and "v5e" in str(e.value) and "local" in str(e.value)
    assert chips.parse_topology("v4:2x2x4") == ("v4", (2, 2, 4))


def test_no_libtpu_names_the_extra(monkeypatch):
    monkeypatch.setattr(chips, "has_libtpu", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'bt_jax\[tpu\]'"):
        chips.tpu_devices("v5e:2x2")


def test_the_plan_names_the_libtpu_that_compiled_it(monkeypatch, tmp_path):
    """The pinned package's version, or the build TPU_LIBRARY_PATH points jax at."""
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    monkeypatch.setattr(chips.importlib.metadata, "version", lambda name: "0.0.42.1")
    assert chips.libtpu_build() == "libtpu 0.0.42.1"
    assert planner.compiler_name("tpu") == f"XLA:TPU (jax {jax.__version__}, libtpu 0.0.42.1)"
    assert planner.compiler_name("cpu") == f"XLA:CPU (jax {jax.__version__})"
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu-0.0.52.dist-info").mkdir()
    so = str(tmp_path / "libtpu" / "libtpu.so")
    monkeypatch.setenv("TPU_LIBRARY_PATH", so)
    assert chips.libtpu_build() == f"libtpu 0.0.52 (TPU_LIBRARY_PATH={so})"


def test_setup_pins_the_tpu_extra_to_the_installed_jax():
    text = open(os.path.join(ROOT, "setup.py")).read()
    assert '"tpu"' in text and "jax[tpu]==" in text


def test_a_batch_the_chips_do_not_divide_is_one_error():
    c = _tiny_config()
    c.batch_size = 12
    with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
        compile_run(c, jax.devices(), RunShape(1000, 10, 3, True))


def test_a_plan_that_does_not_fit_says_what_and_how_to_lower_it():
    c = config_lib.base_config()
    plan = {"memory": {"needed_bytes": 20.5 * 2 ** 30, "hbm_bytes": 16 * 2 ** 30,
                       "fits": False},
            "chip": {"name": "TPU v5e"},
            "run": {"num_devices": 16, "global_batch": c.batch_size, "dtype": c.model.dtype,
                    "projector_dims": list(c.model.projector_dims),
                    "augment_on": c.data.augment_on}}
    with pytest.raises(planner.DoesNotFit) as e:
        planner.check_fits(plan)
    msg = str(e.value)
    assert "20.50 GiB" in msg and "16.00 GiB" in msg and "TPU v5e" in msg
    assert "--config.batch_size=1024" in msg and "model.dtype=bfloat16" in msg
    assert "\n" not in msg
    plan["memory"]["fits"] = True
    planner.check_fits(plan)          # fits: nothing raised


def test_the_compilers_out_of_memory_message_is_read():
    msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
           "space hbm. Used 18.20G of 15.75G hbm. Exceeded hbm capacity by 2.45G.")
    needed, available = parse_out_of_memory(msg)
    assert needed == pytest.approx(18.20 * 2 ** 30) and available == pytest.approx(15.75 * 2 ** 30)
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (88.00G) exceeds available HBM (15.75G).")      # libtpu 0.0.42.1
    needed, available = parse_out_of_memory(msg)
    assert needed == pytest.approx(88 * 2 ** 30) and available == pytest.approx(15.75 * 2 ** 30)
    assert parse_out_of_memory("no sizes here") == (None, None)


def test_run_shape_from_the_registered_source_and_overrides():
    c = config_lib.base_config()
    c.data.name = "imagenet2012"
    s = run_shape(c.data)
    assert (s.examples, s.num_classes, s.channels, s.gather_on_host) == (1_281_167, 1000, 3,
                                                                         False)
    c.data.name = "fashion_mnist"
    c.data.validation_examples = 5000
    s = run_shape(c.data)
    assert (s.examples, s.channels, s.gather_on_host) == (55_000, 1, True)
    c.data.name = "folder"
    with pytest.raises(ConfigError, match="--examples"):
        run_shape(c.data)
    assert run_shape(c.data, examples=500, classes=7).examples == 500


def test_max_batch_search_finds_the_largest_fitting_batch(monkeypatch):
    """A linear memory model (2 GiB + 40 MiB per example; 16 GiB): the answer is
    floor(14 GiB / 40 MiB / 8) * 8 = 352, found in a handful of compiles."""
    devices = [object()] * 4
    chip = chips.Chip("fake", 1e14, 16 * 2 ** 30, 1e12, 1e11, "test")
    monkeypatch.setattr(planner, "devices_for", lambda topology: (devices, chip))
    monkeypatch.setattr(planner, "hbm_of", lambda chip, devices: chip.hbm_bytes)
    compiled = []

    def fake_plan(config, topology, shape, **kwargs):
        per_chip = config.batch_size // 4
        compiled.append(per_chip)
        need = 2 * 2 ** 30 + per_chip * 40 * 2 ** 20
        return {"memory": {"needed_bytes": need, "fits": need <= chip.hbm_bytes}}, None

    monkeypatch.setattr(planner, "make_plan", fake_plan)
    lines = []
    c = config_lib.base_config()
    c.batch_size = 512                   # 128 per chip
    result = planner.find_max_batch(c, "v5e:2x2", RunShape(1000, 10, 3, False), step=8,
                                    progress=lines.append)
    assert result["max_per_chip_batch"] == 352
    assert len(compiled) == len(set(compiled)) == len(lines) <= 6
    assert any("fits" in l for l in lines) and any("does not fit" in l for l in lines)


def _flattening_memory_plans(monkeypatch) -> list:
    """make_plan replaced by a memory curve that flattens, then jumps, as XLA's does near
    the limit (4 chips, 16 GiB: 14 GiB + 1 MiB per example up to 1,500 per chip, then 48
    GiB); returns the list of per-chip batches it was asked to compile."""
    from bt_jax.plan import planner
    gib = 2 ** 30
    compiled = []

    def fake_plan(config, topology, shape, **kwargs):
        per_chip = config.batch_size // 4
        compiled.append(per_chip)
        need = (14 * gib + per_chip * 2 ** 20) if per_chip <= 1500 else 48 * gib
        return {"memory": {"needed_bytes": need, "fits": need <= 16 * gib}}, None

    monkeypatch.setattr(planner, "make_plan", fake_plan)
    _four_fake_chips(monkeypatch)
    return compiled


def _four_fake_chips(monkeypatch) -> None:
    """planner.devices_for replaced by 4 stand-in devices of a 16 GiB chip: the search tests
    replace make_plan and need no compiler (libtpu) at all."""
    from bt_jax.plan import planner
    chip = chips.Chip("fake v5e", 197e12, 16 * 2 ** 30, 819e9, 400e9, "test")
    monkeypatch.setattr(planner, "devices_for", lambda topology: ([object()] * 4, chip))


def test_max_batch_search_bisects_where_the_memory_curve_flattens(monkeypatch):
    """XLA rematerialises near the limit: memory barely grows with the batch until it
    jumps (v4:2x2x4's 28.95 GiB at 1,024 per chip, 28.72 at 1,056, 95.5 at 2,048). A
    straight line through the bracket's ends then creeps up one step a try; the search
    must bisect instead and finish in a handful of compiles."""
    from bt_jax.plan import planner
    from bt_jax.plan.compile import RunShape
    compiled = _flattening_memory_plans(monkeypatch)
    c = config_lib.base_config()
    c.batch_size = 4 * 1024
    result = planner.find_max_batch(c, "v5e:2x2", RunShape(1000, 10, 3, False), step=32,
                                    progress=lambda line: None)
    assert result["max_per_chip_batch"] == 1472          # the largest multiple of 32 <= 1500
    assert len(compiled) <= 10, compiled                 # the line alone would need ~15


def test_max_batch_search_bisects_where_memory_stays_just_over_the_limit(monkeypatch):
    """XLA:GPU holds the memory near its limit over a range of batches (an H100's 59.8 to
    60.3 GiB from 896 to 1,024 per GPU, 59.3 usable): the line through the bracket then
    creeps down from above one step a try; the search must bisect there too."""
    from bt_jax.plan import planner
    from bt_jax.plan.compile import RunShape
    gib, compiled = 2 ** 30, []

    def fake_plan(config, topology, shape, **kwargs):
        per_chip = config.batch_size // 4
        compiled.append(per_chip)
        need = per_chip * gib / 64 if per_chip <= 640 else 16.5 * gib + per_chip * 2 ** 17
        return {"memory": {"needed_bytes": need, "fits": need <= 16 * gib}}, None

    monkeypatch.setattr(planner, "make_plan", fake_plan)
    _four_fake_chips(monkeypatch)
    c = config_lib.base_config()
    c.batch_size = 4 * 512
    result = planner.find_max_batch(c, "v5e:2x2", RunShape(1000, 10, 3, False), step=32,
                                    progress=lambda line: None)
    assert result["max_per_chip_batch"] == 640 and result["complete"]
    assert len(compiled) <= 8, compiled                  # the line alone creeps: about 13


def test_max_batch_search_resumes_from_earlier_tries(monkeypatch):
    """An interrupted search given its tries back compiles none of them again and ends
    where an uninterrupted search ends."""
    from bt_jax.plan import planner
    from bt_jax.plan.compile import RunShape
    compiled = _flattening_memory_plans(monkeypatch)
    c = config_lib.base_config()
    c.batch_size = 4 * 1024
    shape = RunShape(1000, 10, 3, False)
    whole = planner.find_max_batch(c, "v5e:2x2", shape, step=32, progress=lambda line: None)
    first_half = whole["tries"][:3]
    compiled.clear()
    resumed = planner.find_max_batch(c, "v5e:2x2", shape, step=32, progress=lambda line: None,
                                     earlier_tries=first_half)
    assert resumed["max_per_chip_batch"] == whole["max_per_chip_batch"] == 1472
    assert not set(compiled) & {t["per_chip_batch"] for t in first_half}
    assert [t["per_chip_batch"] for t in resumed["tries"]] == \
        [t["per_chip_batch"] for t in whole["tries"]]


def test_max_batch_search_stopped_by_its_compile_limit_says_so_and_resumes(monkeypatch):
    """A search cut short by max_tries returns complete False with its open bracket (plan.md
    says "at least"); given its tries back, the next call closes the bracket."""
    from bt_jax.plan import planner, report
    from bt_jax.plan.compile import RunShape
    gib = 2 ** 30
    _four_fake_chips(monkeypatch)
    monkeypatch.setattr(planner, "make_plan", lambda config, *a, **k: (
        {"memory": {"needed_bytes": 14 * gib + config.batch_size // 4 * 2 ** 20,
                    "fits": 14 * gib + config.batch_size // 4 * 2 ** 20 <= 16 * gib}}, None))
    c = config_lib.base_config()
    c.batch_size = 4 * 256
    shape = RunShape(1000, 10, 3, False)
    cut = planner.find_max_batch(c, "v5e:2x2", shape, step=32, max_tries=3,
                                 progress=lambda line: None)
    assert len(cut["tries"]) == 3 and cut["complete"] is False
    assert cut["max_per_chip_batch"] == 1024 and cut["bracket"] == [1024, None]
    md = "\n".join(report.max_batch_lines(cut))
    assert "at least that" in md and "[1024, ?)" in md
    done = planner.find_max_batch(c, "v5e:2x2", shape, step=32, earlier_tries=cut["tries"],
                                  progress=lambda line: None)
    assert done["complete"] is True and done["max_per_chip_batch"] == 2048
    assert done["bracket"] == [2048, 2080]
    assert "at least" not in "\n".join(report.max_batch_lines(done))


def _tiny_config():
    c = config_lib.base_config()
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.model.backbone, c.model.stem, c.model.width = "resnet18", "cifar", 0.125
    c.model.projector_dims = (64, 64)
    c.batch_size = 32
    c.monitor.online_probe = False
    return c


def _run_plan(tmp_path, *args, env=None, without=()):
    cmd = [sys.executable, "-m", "bt_jax.plan", "--config", "configs/cifar10.py",
           "--out", str(tmp_path), *args]
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in without}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)


@pytest.mark.parametrize("args, expected", [
    (["--topology", "v9x:2x2"], "Unknown topology 'v9x:2x2'"),
    (["--topology", "local", "--config.batch_size=12"], "not divisible by the 8 devices"),
    (["--topology", "v5e:2x2", "--max-batch", "--max-tries=0"], "--max-tries must be at least 1"),
    (["--topology", "v5e:2x2", "--max-batch", "--batch-step=0"], "--batch-step must be at least 1"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, expected):
    r = _run_plan(tmp_path, *args)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("augment_on", ["device", "host"])
def test_batch_shapes_state_the_pipelines_own_layout(augment_on):
    """The planner compiles for `BatchLayout.shapes`: it must be what the pipeline yields."""
    from bt_jax.data import sources
    from bt_jax.data.layout import batch_layout
    c = config_lib.base_config()
    c.data.name, c.data.image_size, c.data.augment_on, c.batch_size = "digits", 16, augment_on, 8
    c.data.augment.blur_prob = (0.0, 0.0)
    source = sources.pretrain_split(c.data, c.seed)
    batch = next(config_batches(c, source))
    expected = batch_layout(augment_on, source.gather_on_host).shapes(
        8, 16, sources.get_source("digits").shape.channels)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == expected


@pytest.mark.slow
def test_local_plan_compiles_the_trainers_step_and_measures_it():
    """--topology local on 8 CPU devices: the same fields as a TPU plan, the programs of
    on-device augmentation and of the step, the gradient all-reduce among the collectives
    (the backward all-reduces carry at least every parameter's bytes), and the measured
    step beside the estimate."""
    c = _tiny_config()
    c.data.augment_on = "device"
    c.data.augment.blur_prob = (0.0, 0.0)
    shape = run_shape(c.data)
    devices, chip = jax.devices(), chips.Chip("cpu", 1e11, 0, 1e10, 0, "test")
    said = []
    plan, run = planner.make_plan(c, "local", shape, devices_and_chip=(devices, chip),
                                  progress=said.append)
    # a line before and after each program's compile, the time in the second
    names = ["views (on-device augmentation)", "train step"]
    assert len(said) == 4
    for i, name in enumerate(names):
        assert said[2 * i] == f"  compiling {name} ..."
        assert re.match(rf"  compiled {re.escape(name)} in \d+\.\d s: ", said[2 * i + 1])
    assert [p["name"] for p in plan["programs"]] == ["views (on-device augmentation)",
                                                    "train step"]
    step = plan["programs"][1]
    assert step["flops"] > 0 and step["bytes_accessed"] > 0 and step["total_bytes"] > 0
    assert plan["run"]["per_device_batch"] == 4 and plan["run"]["num_devices"] == 8
    kinds = step["collective_summary"]["by_kind"]
    assert kinds["all-reduce"]["count"] >= 1
    assert plan["backward_all_reduce_bytes"] >= plan["parameter_bytes"] > 0
    assert plan["memory"]["fits"] and plan["estimate"]["step_seconds"] > 0
    measured = planner.measure_step(run, steps=2)
    assert measured["step_seconds"] > 0 and len(measured["times"]) == 2
    # compared against this machine's memory, shared by the 8 CPU devices, and said so
    assert plan["memory"]["hbm_bytes"] == pytest.approx(chips.host_memory_bytes() / 8)
    plan["measured"] = {**measured, "ratio_to_estimate": 1.0}
    text = report.summary(plan) + report.markdown(plan)
    assert "host memory, shared by 8 CPU device(s)" in text
    assert "?" not in report.summary(plan) and not re.search(r"\b0\.0 (days|h)", text)
    days = plan["estimate"]["days_per_1000_epochs"]
    assert f"{report.two_figures(days)} days for 1,000 epochs" in report.summary(plan)


@pytest.mark.parametrize("value, text", [
    (0.00103, "0.0010"), (0.0429, "0.043"), (0.45, "0.45"), (1.01, "1.0"), (9.96, "10"),
    (659.5, "660"), (7184.0, "7,200"), (0.0, "0")])
def test_plan_times_keep_two_significant_figures(value, text):
    assert report.two_figures(value) == text




@pytest.mark.slow
@pytest.mark.libtpu
def test_plan_compiles_for_a_4_chip_tpu_slice(tmp_path):
    """`python -m bt_jax.plan` with the real XLA:TPU compiler (libtpu) on this CPU, for a
    v5e:2x2 slice: plan.json holds every field, memory and FLOPs are positive and grow
    with the batch, and the gradient all-reduce is among the compiled collectives."""
    tiny = ["--config.data.image_size=32", "--config.model.backbone=resnet18",
            "--config.model.stem=cifar", "--config.model.width=0.125",
            "--config.model.projector_dims=(64,64)", "--config.monitor.online_probe=False"]
    # as a user runs it (no JAX_PLATFORMS): the TPU left out of the backends on this host
    # that has none (bt_jax.platforms) still compiles for the slice, and says nothing of it
    r = _run_plan(tmp_path, "--topology", "v5e:2x2", "--config.batch_size=32", *tiny,
                  without=("JAX_PLATFORMS",))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert not re.search(r"E0000|TPU accelerator type|InitGoogle", r.stderr), r.stderr[-2000:]
    assert "compiling train step" in r.stdout and "Roofline estimate (not a" in r.stdout
    assert "Memory per chip" in r.stdout and "compiled in" in r.stdout
    plan = json.load(open(tmp_path / "plan.json"))
    assert os.path.getsize(tmp_path / "plan.md") > 500
    assert plan["run"]["num_devices"] == 4 and plan["run"]["per_device_batch"] == 8
    assert plan["device_kind"] == "TPU v5 lite" and plan["compiler"].startswith("XLA:TPU")
    assert plan["chip"]["hbm_bytes"] == 16 * 2 ** 30 and plan["memory"]["fits"]
    step = plan["programs"][0]
    for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "total_bytes",
                "flops", "bytes_accessed", "compile_seconds"):
        assert step[key] > 0, key
    assert plan["estimate"]["pairs_per_second_per_chip"] > 0
    assert plan["estimate"]["days_per_1000_epochs"] > 0
    for c in step["collectives"]:
        assert c["kind"] in hlo.KINDS and c["bytes"] > 0 and c["group_size"] == 4
    assert plan["backward_all_reduce_bytes"] >= plan["parameter_bytes"] > 0   # the gradients

    config = _tiny_config()
    config.batch_size = 64
    larger, _ = planner.make_plan(config, "v5e:2x2", run_shape(config.data),
                                  progress=lambda *_: None)
    big = larger["programs"][0]
    assert big["flops"] > 1.8 * step["flops"]             # twice the pairs per chip
    assert big["temp_bytes"] > step["temp_bytes"] and big["total_bytes"] > step["total_bytes"]
    assert big["argument_bytes"] > step["argument_bytes"]   # the batch is an argument


@pytest.mark.slow
@pytest.mark.libtpu
def test_cli_max_batch_searches_with_real_compiles_and_says_when_it_stopped(tmp_path):
    """`--max-batch` end to end on v5e:2x2 with XLA:TPU: the plan's batch is not compiled
    again, each try is one printed line, and a search cut short by --max-tries reports a
    lower bound with its open bracket, in the output, plan.json and plan.md."""
    tiny = ["--config.data.image_size=32", "--config.model.backbone=resnet18",
            "--config.model.stem=cifar", "--config.model.width=0.125",
            "--config.model.projector_dims=(64,64)", "--config.monitor.online_probe=False"]
    r = _run_plan(tmp_path, "--topology", "v5e:2x2", "--config.batch_size=32", *tiny,
                  "--max-batch", "--batch-step=8", "--max-tries=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    tries = [l for l in r.stdout.splitlines() if l.strip().startswith("try ")]
    assert len(tries) == 1 and "batch 16 per chip (64 global)" in tries[0], r.stdout[-2000:]
    assert "largest per-chip batch that fits: 16 at least" in r.stdout
    assert "--max-tries=1" in r.stdout and "[16, ?)" in r.stdout
    found = json.load(open(tmp_path / "plan.json"))["max_batch"]
    assert [t["per_chip_batch"] for t in found["tries"]] == [8, 16]
    assert found["tries"][1]["fits"] and found["tries"][1]["needed_bytes"] > \
        found["tries"][0]["needed_bytes"] > 0
    assert found["complete"] is False and found["bracket"] == [16, None]
    assert "at least that" in (tmp_path / "plan.md").read_text()


def _plan_dict(refused: bool) -> dict:
    chip = chips.TPU_CHIPS["v5e"]
    program = {"name": "train step", "argument_bytes": 2 ** 30, "output_bytes": 2 ** 29,
               "alias_bytes": 2 ** 29, "temp_bytes": 2 ** 32, "total_bytes": 5 * 2 ** 30,
               "generated_code_bytes": 2 ** 20, "flops": 6e12, "bytes_accessed": 1e11,
               "compile_seconds": 300.0,
               "collectives": [hlo.collectives(HLO, 8)[0].as_dict()],
               "collective_summary": hlo.summarize(hlo.collectives(HLO, 8)[:1])}
    plan = {"topology": "v5e:4x4", "command": "python -m bt_jax.plan ...",
            "device_kind": "TPU v5 lite", "compiler": "XLA:TPU",
            "chip": {"name": chip.name, "source": chip.source},
            "run": {"config": "configs/imagenet.py", "num_devices": 16, "global_batch": 2048,
                    "per_device_batch": 128, "backbone": "resnet50", "projector_dims": [8192],
                    "dtype": "bfloat16", "augment_on": "host"}}
    if refused:
        plan.update(programs=[], compile_seconds=0.0, estimate=None, memory={
            "needed_bytes": 88 * 2 ** 30, "hbm_bytes": 15.75 * 2 ** 30, "fits": False,
            "refused_by_compiler": "RESOURCE_EXHAUSTED: ..."})
    else:
        plan.update(programs=[program], compile_seconds=300.0, parameter_bytes=7e8,
                    backward_all_reduce_bytes=7.1e8,
                    memory={"needed_bytes": 5 * 2 ** 30, "hbm_bytes": 16 * 2 ** 30, "fits": True},
                    estimate=report.step_estimate([program], chip, 128, 16, 1_281_167))
    return plan


@pytest.mark.parametrize("refused", [False, True])
def test_plan_md_and_json_are_written_for_plans_that_fit_and_refused_ones(tmp_path, refused):
    plan = _plan_dict(refused)
    json_path, md_path = report.write(plan, str(tmp_path))
    assert json.load(open(json_path))["memory"]["fits"] is (not refused)
    md = open(md_path).read()
    assert "## Memory per chip" in md and "v5e:4x4" in md
    if refused:
        assert "does NOT fit" in md and "refused" in md
        assert "does not fit" in report.summary(plan)
    else:
        assert "all-gather" in md and "roofline estimate (not a measurement)" in md
        assert "pairs/s per chip" in report.summary(plan)


def test_plan_pods_rows_are_the_papers_recipe_and_its_table_reads_plans(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "plan_pods", os.path.join(ROOT, "experiments", "plan_pods.py"))
    pods = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pods)
    c = pods._recipe(["--config.model.dtype=float32"])
    assert (c.model.backbone, tuple(c.model.projector_dims), c.batch_size) == (
        "resnet50", (8192, 8192, 8192), 2048)
    assert c.model.dtype == "float32" and pods._recipe([]).model.dtype == "bfloat16"
    assert {t.split(":")[0] for t, _ in pods.ROWS.values()} == {
        "v4", "v5e", "v5p", "v6e", "a100", "b200", "h100", "h200"}
    assert {t for t, _ in pods.GPU_ROWS.values()} == {
        f"{g}:{n}" for g in ("a100", "b200", "h100", "h200") for n in ("8", "4x8")}
    monkeypatch.setattr(pods, "OUT", str(tmp_path))
    os.makedirs(tmp_path / "v5e_16")
    report.write(_plan_dict(False), str(tmp_path / "v5e_16"))
    gpu = _plan_dict(False)          # a GPU row: 4 nodes of 8, bytes within and between
    gpu.update(topology="h100:4x8", memory={"needed_bytes": 6 * 2 ** 30,
                                            "hbm_bytes": 60 * 2 ** 30, "fits": True})
    gpu["run"]["num_devices"] = 32
    gpu["programs"][0]["collective_summary"].update(
        count=152, intra_node_wire_bytes=1356e6, inter_node_wire_bytes=145e6,
        inter_node_count=152)
    os.makedirs(tmp_path / "h100_32")
    report.write(gpu, str(tmp_path / "h100_32"))
    table = pods.tables()
    assert "| v5e_16 | v5e:4x4 | 16 | 128 | bfloat16 | 5.00 (16) | yes |" in table
    assert "| h100_32 | h100:4x8 | 32 | 6.00 (60.0) | yes | 152, 1356 | 152, 145 |" in table
    assert table.count("h100_32") == 1          # in the GPU table only


@pytest.mark.slow
@pytest.mark.libtpu
def test_cli_plan_that_does_not_fit_is_one_line_with_the_sizes(tmp_path):
    """A 40960-wide projector (6.25 GiB of float32 weights, as much again of LARS momentum
    and of gradients) cannot fit a v5e: the compiler refuses it, and the planner says so
    in one line, with what would lower it."""
    r = _run_plan(tmp_path, "--topology", "v5e:2x2", "--config.batch_size=8",
                  "--config.data.image_size=32", "--config.model.backbone=resnet18",
                  "--config.model.stem=cifar", "--config.model.width=0.125",
                  "--config.model.projector_dims=(40960,40960)",
                  "--config.monitor.online_probe=False")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-2000:]
    assert "does not fit" in errors[0] and "GiB" in errors[0] and "TPU v5e" in errors[0]
    assert "batch_size" in errors[0] and "projector" in errors[0]
    assert json.load(open(tmp_path / "plan.json"))["memory"]["fits"] is False


def test_a_tpu_plan_compiles_the_convolutions_a_tpu_run_picks():
    """conv_impl="auto" picks from the backend the model is traced on, the CPU here: a plan
    for a TPU must compile the TPU's choice ("xla"), and leave an explicit choice alone."""
    from bt_jax.models.conv import choose_conv_impl
    from bt_jax.plan.compile import conv_impl_for
    assert choose_conv_impl((8, 2, 2, 64), (3, 3, 64, 64), 1, 1, backend="cpu") == "dense"
    assert choose_conv_impl((8, 2, 2, 64), (3, 3, 64, 64), 1, 1, backend="tpu") == "xla"
    assert _tiny_config().model.conv_impl == "auto"
    assert conv_impl_for("auto", "tpu") == "xla" and conv_impl_for("auto", "cpu") == "auto"
    assert conv_impl_for("im2col", "tpu") == "im2col"


def test_accelerator_types_of_slices():
    """What libtpu is told of the slice it compiles for (no TPU attached: it stays quiet)."""
    assert chips.accelerator_type("v5e:4x4") == "v5litepod-16"
    assert chips.accelerator_type("v4:2x2x4") == "v4-32"         # two TensorCores a chip
    assert chips.accelerator_type("v5p:2x2x4") == "v5p-32"
    assert chips.accelerator_type("v6e:8x8") == "v6e-64"
