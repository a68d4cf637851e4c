"""GPU nodes in the planner: the topology notation, each GPU's cited figures and the
target description XLA:GPU compiles for, FLOPs counted over compiled HLO (against XLA's
own cost analysis, a NumPy count of a convolution's taps, and the TPU plan's FLOPs), the
collectives' bytes within and between nodes, and (with JAX's CUDA plugin) real XLA:GPU
compiles for a 4-GPU node on this CPU."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.errors import ConfigError
from bt_jax.plan import chips, gpus, hlo, hlo_cost, planner, report
from bt_jax.plan.compile import RunShape, compile_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.data.image_size=32", "--config.model.backbone=resnet18",
        "--config.model.stem=cifar", "--config.model.width=0.125",
        "--config.model.projector_dims=(64,64)", "--config.monitor.online_probe=False"]


def _tiny_config():
    from bt_jax import config as config_lib
    c = config_lib.base_config()
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.model.backbone, c.model.stem, c.model.width = "resnet18", "cifar", 0.25
    c.model.projector_dims = (128, 128)
    c.model.dtype = "bfloat16"
    c.batch_size = 32
    c.monitor.online_probe = False
    return c


@pytest.mark.parametrize("name, expected", [
    ("h100:8", ("h100", 1, 8)), ("h100:4x8", ("h100", 4, 8)), ("A100:1", ("a100", 1, 1)),
    ("b200:2x4", ("b200", 2, 4)), ("h200:16x8", ("h200", 16, 8))])
def test_gpu_topologies_are_gpu_nodes_times_gpus(name, expected):
    spec, nodes, per_node = gpus.parse_topology(name)
    assert (spec.kind, nodes, per_node) == expected


@pytest.mark.parametrize("name, message", [
    ("h100:9", "a NVIDIA H100 SXM5 80GB node holds 1 to 8 GPUs"),
    ("h100:0", "holds 1 to 8 GPUs"),
    ("h100:0x8", "at least one node"),
    ("h100:8x", "Unknown GPU topology 'h100:8x'. Give GPU:GPUS or GPU:NODESxGPUS"),
    ("x100:8", "GPU nodes GPU:GPUS or GPU:NODESxGPUS with GPU one of ['a100', 'b200', 'h100', "
               "'h200']")])
def test_bad_gpu_topologies_say_the_notation_and_the_known_gpus(name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        chips.check_topology(name)


def test_every_gpu_figure_has_a_source_and_a_sane_value():
    known = gpus.known()
    assert sorted(known) == ["a100", "b200", "h100", "h200"]
    for spec in known.values():
        assert set(spec.values) == set(spec.sources)
        for field, source in spec.sources.items():
            assert len(source) > 20, (spec.kind, field)
        assert spec["gpus_per_node"] == 8
        assert 100e12 < spec["bf16_flops"] < 5e15 and 1e12 < spec["hbm_bandwidth"] < 10e12
        assert spec["network_bandwidth"] < spec["nvlink_bandwidth"]
        assert 40 * 2 ** 30 < spec["memory_bytes"] < 200 * 2 ** 30
    h100 = known["h100"]
    # the published figures the roofline uses (NVIDIA's H100 SXM datasheet)
    assert (h100["bf16_flops"], h100["hbm_bandwidth"], h100["nvlink_bandwidth"]) == (
        989e12, 3.35e12, 450e9)


def test_the_target_description_holds_the_data_files_facts():
    spec = gpus.known()["h100"]
    text = gpus.target_config(spec)
    assert "core_count: 132" in text and "l2_cache_size: 52428800" in text
    assert f"device_memory_size: {spec['memory_bytes']}" in text
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
    assert 'platform_name: "CUDA"' in text and "dnn_version_info { major: 9" in text


def test_the_memory_a_gpu_plan_may_use_is_jaxs_share(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert gpus.memory_fraction() == 0.75
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    assert gpus.memory_fraction() == 0.9

    class Device:
        platform = "gpu"

        def memory_stats(self):
            return None
    chip = chips.gpu_chip(gpus.known()["h100"], 8)
    assert chips.hbm_of(chip, [Device()]) == pytest.approx(0.9 * gpus.known()["h100"]["memory_bytes"])


# ---- FLOPs counted over compiled HLO ----

def _ones_conv_macs(in_hw, kernel, stride, padding, lhs_dilation, rhs_dilation, batch,
                    in_features, out_features):
    """Multiply-adds of a convolution counted by running it on ones in float64 NumPy:
    each output element is the number of (tap, input feature) pairs inside the input."""
    h, w = in_hw
    x = np.zeros(((h - 1) * lhs_dilation[0] + 1, (w - 1) * lhs_dilation[1] + 1))
    x[::lhs_dilation[0], ::lhs_dilation[1]] = 1.0
    x = np.pad(x, padding)
    kh, kw = kernel
    span = ((kh - 1) * rhs_dilation[0] + 1, (kw - 1) * rhs_dilation[1] + 1)
    out_h = (x.shape[0] - span[0]) // stride[0] + 1
    out_w = (x.shape[1] - span[1]) // stride[1] + 1
    total = 0.0
    for i in range(out_h):
        for j in range(out_w):
            window = x[i * stride[0]:i * stride[0] + span[0]:rhs_dilation[0],
                       j * stride[1]:j * stride[1] + span[1]:rhs_dilation[1]]
            total += window.sum()
    return total * batch * in_features * out_features, (out_h, out_w)


@pytest.mark.parametrize("in_hw, kernel, stride, padding, lhs_dilation, rhs_dilation", [
    ((7, 7), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),      # ResNet's 3x3, SAME
    ((224, 224), (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), (1, 1)),  # ResNet's stem
    ((9, 6), (3, 2), (2, 3), ((0, 2), (1, 0)), (1, 1), (2, 1)),      # dilated filter
    ((4, 5), (3, 3), (1, 1), ((2, 2), (1, 2)), (2, 3), (1, 1)),      # a backward-input conv
])
def test_convolution_flops_count_only_taps_inside_the_input(in_hw, kernel, stride, padding,
                                                            lhs_dilation, rhs_dilation):
    macs, out_hw = _ones_conv_macs(in_hw, kernel, stride, padding, lhs_dilation, rhs_dilation,
                                   batch=3, in_features=5, out_features=4)
    window = {"size": list(kernel), "stride": list(stride), "pad": list(padding),
              "lhs_dilate": list(lhs_dilation), "rhs_dilate": list(rhs_dilation)}
    flops = hlo_cost.convolution_flops((3, *in_hw, 5), (*kernel, 5, 4), (3, *out_hw, 4),
                                       ("b01f", "01io", "b01f"), window)
    assert flops == 2 * macs


def test_counted_flops_match_xla_cost_analysis_on_the_cpu():
    """A strided, padded, dilated convolution, a matmul and their gradients, compiled by
    XLA:CPU: the HLO count equals XLA's own cost analysis to a FLOP or two (a scalar op
    it rounds differently)."""
    conv = dict(window_strides=(2, 2), padding=((1, 2), (0, 1)), rhs_dilation=(2, 1),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def f(x, w, m):
        y = jax.lax.conv_general_dilated(x, w, **conv)
        return jnp.sum(jnp.maximum(y.reshape(y.shape[0], -1) @ m, 0.0))

    x, w = jnp.ones((4, 9, 7, 3)), jnp.ones((3, 3, 3, 5))
    y = jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(x, w, **conv), x, w)
    m = jnp.ones((int(np.prod(y.shape[1:])), 6))
    compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2))).lower(x, w, m).compile()
    counted = hlo_cost.count(compiled.as_text())
    assert abs(counted["flops"] - compiled.cost_analysis()["flops"]) <= 2
    assert 0.9 * counted["flops"] < counted["matmul_flops"] < counted["flops"]


CUDNN_HLO = """
HloModule m, is_scheduled=true

%fused (p0: bf16[16,8,8,32], p1: bf16[32,64]) -> bf16[16,8,8,64] {
  %p0 = bf16[16,8,8,32]{3,2,1,0} parameter(0)
  %p1 = bf16[32,64]{1,0} parameter(1)
  %b = bf16[1024,32]{1,0} bitcast(%p0)
  %dot.1 = bf16[1024,64]{1,0} dot(%b, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %r = bf16[16,8,8,64]{3,2,1,0} bitcast(%dot.1)
}

ENTRY %main (x: bf16[16,8,8,32], w: bf16[64,3,3,32], g: bf16[16,8,8,64], m: bf16[32,64]) -> bf16[16,8,8,64] {
  %x = bf16[16,8,8,32]{3,2,1,0} parameter(0)
  %w = bf16[64,3,3,32]{3,2,1,0} parameter(1)
  %g = bf16[16,8,8,64]{3,2,1,0} parameter(2)
  %m = bf16[32,64]{1,0} parameter(3)
  %fwd = (bf16[16,8,8,64]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %bwf = (bf16[64,3,3,32]{3,2,1,0}, u8[0]{0}) custom-call(%x, %g), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %bwi = (bf16[16,8,8,32]{3,2,1,0}, u8[0]{0}) custom-call(%g, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %gemm = (bf16[1024,64]{1,0}, s8[0]{0}) custom-call(%x2, %m), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %x2 = bf16[1024,32]{1,0} bitcast(%x)
  ROOT %f = bf16[16,8,8,64]{3,2,1,0} fusion(%x, %m), kind=kCustom, calls=%fused
}
"""


def test_cudnn_and_cublas_calls_count_as_the_forward_convolution_and_the_dot():
    macs, _ = _ones_conv_macs((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1),
                              batch=16, in_features=32, out_features=64)
    module = hlo_cost.parse(CUDNN_HLO)
    by_name = module.by_name
    for name in ("fwd", "bwf", "bwi"):        # the gradients cost what the forward costs
        assert hlo_cost.instruction_flops(module, by_name[name]) == 2 * macs, name
    dot = 2 * 1024 * 64 * 32
    assert hlo_cost.instruction_flops(module, by_name["gemm"]) == dot
    counted = hlo_cost.count(CUDNN_HLO)
    assert counted["flops"] == counted["matmul_flops"] == 3 * 2 * macs + 2 * dot
    # the kernels' bytes: each call's operands and result (views and parameters none)
    x, w, g, m = 16 * 8 * 8 * 32 * 2, 64 * 9 * 32 * 2, 16 * 8 * 8 * 64 * 2, 32 * 64 * 2
    assert counted["bytes_accessed"] == (x + w + g) * 3 + (x + m + 1024 * 64 * 2) * 2


def test_a_while_loop_counts_its_body_its_trip_count_of_times():
    text = """
%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %p = (s32[], f32[8,8]{1,0}) parameter(0)
  %a = f32[8,8]{1,0} get-tuple-element(%p), index=1
  %d = f32[8,8]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[8,8]{1,0}) tuple(%i, %d)
}
ENTRY %main (x: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %x = (s32[], f32[8,8]{1,0}) parameter(0)
  ROOT %w = (s32[], f32[8,8]{1,0}) while(%x), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
}
"""
    assert hlo_cost.count(text)["flops"] == 5 * 2 * 8 * 8 * 8


# ---- collectives within and between nodes ----

def test_collectives_over_nodes_split_into_nvlink_and_network_bytes():
    node_of = [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    size = 64 * 2 ** 20
    every = hlo.Collective("ar", "all-reduce", ("f32[16777216]",), size, "{}", 32, "")
    intra, inter = every.node_split(node_of)
    assert intra == pytest.approx(2 * 7 / 8 * size)              # among the node's 8
    assert inter == pytest.approx(2 * 3 / 4 * size / 8)          # among 4 nodes, 1/8 each
    within = hlo.Collective("ar", "all-reduce", ("f32[4]",), 16, "[4,8]<=[32]", 8, "")
    assert within.node_split(node_of) == (pytest.approx(2 * 7 / 8 * 16), 0.0)
    strided = hlo.Collective("ag", "all-gather", ("f32[32]",), 128, "[8,4]<=[4,8]T(1,0)", 4, "")
    assert hlo.expand_groups("[8,4]<=[4,8]T(1,0)", 32)[0] == [0, 8, 16, 24]
    assert strided.node_split(node_of) == (0.0, pytest.approx(3 / 4 * 128))
    assert every.node_split(None) == (every.wire_bytes, 0.0)     # a TPU slice: one domain
    s = hlo.summarize([every, within], node_of)
    assert s["inter_node_count"] == 1
    # an all-reduce's two phases add up to the flat ring's bytes: 2(g-1)/g + 2(k-1)/(kg)
    assert s["intra_node_wire_bytes"] + s["inter_node_wire_bytes"] == pytest.approx(s["wire_bytes"])


def test_xla_gpus_async_reduce_scatter_counts_its_output_only():
    text = ("  %rs = ((f32[256]{0}), f32[32]{0}) reduce-scatter-start(%c), channel_id=146, "
            "replica_groups={{0,1,2,3,4,5,6,7},{8,9,10,11,12,13,14,15}}, dimensions={0}, "
            "to_apply=%r\n"
            "  %rsd = f32[32]{0} reduce-scatter-done(%rs)\n")
    (rs,) = hlo.collectives(text, 16)
    assert rs.shapes == ("f32[32]",) and rs.bytes == 128 and rs.group_size == 8
    assert rs.operand_shapes == ("f32[256]",) and rs.wire_bytes == 7 * 128


def test_gpu_roofline_times_nvlink_and_network_bytes_at_their_own_bandwidths():
    chip = chips.gpu_chip(gpus.known()["h100"], 8)
    program = {"flops": 989e12 * 0.01, "bytes_accessed": 0.0,
               "collective_summary": {"wire_bytes": 1e9, "intra_node_wire_bytes": 450e6,
                                      "inter_node_wire_bytes": 50e6}}
    est = report.roofline(program, chip)
    assert est["compute_seconds"] == pytest.approx(0.01)
    assert est["collective_seconds"] == pytest.approx(450e6 / 450e9 + 50e6 / 50e9)


# ---- XLA:GPU for real, on this CPU ----

def _run_plan(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}   # as a user runs it
    env["XLA_FLAGS"] = ""
    return subprocess.run([sys.executable, "-m", "bt_jax.plan", "--config", "configs/cifar10.py",
                           "--out", str(tmp_path), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.cuda_plugin
def test_plan_compiles_for_a_4_gpu_node_with_xla_gpu(tmp_path):
    """`python -m bt_jax.plan --topology h100:4` with XLA:GPU on this CPU, as a user runs
    it: the H100's own device name and memory, cuDNN convolutions, FLOPs counted, every
    all-reduce within the node, an estimate, and no CUDA start-up noise."""
    r = _run_plan(tmp_path, "--topology", "h100:4", "--config.batch_size=32", *TINY)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert not re.search(r"cuInit|Traceback|CUDA_ERROR|plugin configuration error", r.stderr), \
        r.stderr[-2000:]
    plan = json.load(open(tmp_path / "plan.json"))
    spec = gpus.known()["h100"]
    assert plan["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert plan["compiler"].startswith("XLA:GPU (jax ")
    assert plan["chip"]["hbm_bytes"] == spec["memory_bytes"]
    assert plan["memory"]["hbm_bytes"] == pytest.approx(0.75 * spec["memory_bytes"])
    assert plan["memory_fraction"] == pytest.approx(0.75) and plan["memory"]["fits"]
    step = plan["programs"][0]
    assert step["cost_source"] == "counted over the compiled HLO (bt_jax.plan.hlo_cost)"
    assert 0 < step["matmul_flops"] <= step["flops"] and step["bytes_accessed"] > 0
    for key in ("argument_bytes", "temp_bytes", "total_bytes"):
        assert step[key] > 0, key
    kinds = {c["kind"] for c in step["collectives"]}
    assert "all-reduce" in kinds and all(c["group_size"] == 4 for c in step["collectives"])
    s = step["collective_summary"]
    assert s["inter_node_wire_bytes"] == 0 and s["intra_node_wire_bytes"] == s["wire_bytes"] > 0
    # every gradient is reduced: at least the parameters' bytes go through all-reduces
    assert s["by_kind"]["all-reduce"]["bytes"] >= plan["parameter_bytes"]
    assert plan["estimate"]["pairs_per_second_per_chip"] > 0
    md = open(tmp_path / "plan.md").read()
    assert "JAX gives XLA" in md and "NVLink, 450 GB/s each way" in md


@pytest.mark.cuda_plugin
def test_a_plan_over_two_nodes_sends_part_of_each_collective_between_them():
    config = _tiny_config()
    devices, chip = chips.devices_for("h100:2x2")
    assert [d.process_index for d in devices] == [0, 0, 1, 1]
    run = compile_run(config, devices, RunShape(50_000, 10, 3, True), progress=lambda *_: None)
    s = run.programs[-1]["collective_summary"]
    assert s["inter_node_count"] == s["count"] > 0
    expected = [hlo.Collective(**{k: c[k] for k in ("name", "kind", "bytes", "replica_groups",
                                                    "group_size", "op_name", "dimension")},
                               shapes=tuple(c["shapes"])).node_split([0, 0, 1, 1])
                for c in run.programs[-1]["collectives"]]
    assert s["inter_node_wire_bytes"] == pytest.approx(sum(b for _, b in expected))
    assert s["intra_node_wire_bytes"] == pytest.approx(sum(a for a, _ in expected))


@pytest.mark.cuda_plugin
@pytest.mark.libtpu
def test_gpu_flops_equal_the_tpu_plans_for_the_same_per_device_program():
    """The same config on 4 H100s (XLA:GPU, FLOPs counted over its HLO) and on a 4-chip
    v5e slice (XLA:TPU's cost analysis): the dots and convolutions are the same FLOPs to
    the last one; the totals agree within 3% (the compilers fuse and convert elementwise
    work differently: 2.1% apart on this config). The count of the TPU program's own HLO
    is within 0.1% of XLA:TPU's cost analysis (0.02% here)."""
    config = _tiny_config()
    shape = RunShape(50_000, 10, 3, True)
    gpu = compile_run(config, chips.devices_for("h100:4")[0], shape, progress=lambda *_: None)
    tpu = compile_run(config, chips.devices_for("v5e:2x2")[0], shape, progress=lambda *_: None)
    g, t = gpu.programs[-1], tpu.programs[-1]
    assert t["cost_source"] == "XLA's cost analysis"
    assert g["matmul_flops"] == t["matmul_flops"] > 0
    assert g["flops"] == pytest.approx(t["flops"], rel=0.03)
    counted_tpu = hlo_cost.count(tpu.executables[-1].as_text())
    assert counted_tpu["flops"] == pytest.approx(t["flops"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.cuda_plugin
def test_max_batch_searches_gpu_memory(tmp_path):
    """--max-batch on a GPU node: each try a real XLA:GPU compile, against the share of
    the GPU's memory JAX gives XLA (here 0.0005 of it, about 42 MB, so that small batches
    reach it)."""
    env_fraction = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.0005"
    try:
        config = _tiny_config()
        config.batch_size = 32
        result = planner.find_max_batch(config, "h100:4", RunShape(50_000, 10, 3, True),
                                        step=8, max_tries=8, progress=lambda *_: None)
    finally:
        if env_fraction is None:
            os.environ.pop("XLA_PYTHON_CLIENT_MEM_FRACTION")
        else:
            os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = env_fraction
    hbm = 0.0005 * gpus.known()["h100"]["memory_bytes"]
    assert result["hbm_bytes"] == pytest.approx(hbm)
    fits = [t for t in result["tries"] if t["fits"]]
    refused = [t for t in result["tries"] if not t["fits"]]
    assert fits and refused and result["max_per_chip_batch"] == max(t["per_chip_batch"] for t in fits)
    assert all(t["needed_bytes"] <= hbm for t in fits)
    assert all(t["needed_bytes"] > hbm for t in refused)


@pytest.mark.cuda_plugin
def test_gpu_devices_are_made_where_jax_started_without_jax_platforms():
    """A script that started JAX's backends on a machine with no GPU and JAX_PLATFORMS
    unset (the CUDA plugin's driver check failed, so it never registered) still plans for
    GPU nodes: the plugin is registered without the check."""
    code = ("import jax; jax.devices(); from bt_jax.plan import gpus; "
            "d, spec, n = gpus.devices('a100:2'); "
            "print(len(d), d[0].device_kind, d[0].platform, n)")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "2 NVIDIA A100-SXM4-80GB gpu 2"
    assert "JAX_SKIP_CUDA_CONSTRAINTS_CHECK" not in os.environ


@pytest.mark.cuda_plugin
@pytest.mark.parametrize("kind", ["a100", "b200", "h100", "h200"])
def test_one_gpu_of_each_kind_is_the_device_its_data_file_describes(kind):
    """`<gpu>:1` is one compile-only device named as the real GPU names itself, with the
    data file's memory behind the plan's limit."""
    devices, chip = chips.devices_for(f"{kind}:1")
    spec = gpus.known()[kind]
    assert len(devices) == 1 and devices[0].platform == "gpu"
    assert devices[0].device_kind == spec["device_kind"]
    assert chip.hbm_bytes == spec["memory_bytes"] and chip.devices_per_node == 1
    assert chips.hbm_of(chip, devices) == pytest.approx(gpus.memory_fraction() * spec["memory_bytes"])
