"""PyTorch interop: torchvision-layout ResNet weights (FAIR, solo-learn, DataParallel) <->
bt_jax variables, exact round trips, forward equality with a PyTorch ResNet, and the
convert command."""
import copy
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torchvision_models
from bt_jax.io import interop
from bt_jax.io import weights
from bt_jax import convert
from bt_jax.errors import ConfigError
from bt_jax.models import BarlowTwins, make_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_variables(module, x, seed=0):
    """Variables with every leaf random (BN statistics too, variances positive)."""
    v = jax.eval_shape(lambda: module.init(jax.random.key(seed), x, train=False))  # shapes
    leaves, treedef = jax.tree.flatten(v)
    rng = np.random.default_rng(seed)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]]
    new = [(np.abs(rng.normal(1.0, 0.3, l.shape)) + 0.1 if "var" in p else
            rng.normal(0, 0.1, l.shape)).astype(np.float32) for p, l in zip(paths, leaves)]
    return jax.tree.unflatten(treedef, new)


def _equal(a, b) -> bool:
    return (jax.tree.structure(a) == jax.tree.structure(b) and
            all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


@pytest.fixture(scope="module")
def r18_cifar():
    """A width-0.25 CIFAR-stem ResNet-18 with a 3-layer projector: BarlowTwins variables."""
    model = BarlowTwins(backbone=make_backbone("resnet18", stem="cifar", width=0.25),
                        projector_dims=(32, 32, 16))
    return _random_variables(model, jnp.zeros((2, 8, 8, 3)))


def test_round_trips_are_exact(r18_cifar):
    backbone = weights.backbone_of(r18_cifar)
    state = interop.to_torch(backbone, "resnet18")
    assert state["conv1.weight"].shape == (16, 3, 3, 3)                 # OIHW
    assert state["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert state["layer2.0.downsample.1.running_var"].dtype == np.float32
    assert not any(k.startswith("projector") for k in state)
    assert _equal(interop.from_torch(state, "resnet18"), backbone)
    full = interop.to_torch(r18_cifar, "resnet18", projector=True)
    assert full["projector.0.weight"].shape == (32, 128) and "projector.6.weight" in full
    assert "projector.2.weight" not in full and "projector.1.running_mean" in full
    again = interop.from_torch(full, "resnet18")
    assert _equal(again, r18_cifar)
    back = interop.to_torch(again, "resnet18", projector=True)
    assert back.keys() == full.keys() and all(np.array_equal(back[k], full[k]) for k in full)


def test_wrappers_fair_hub_fair_checkpoint_solo_learn_and_data_parallel(r18_cifar):
    full = interop.to_torch(r18_cifar, "resnet18", projector=True)
    backbone = {k: v for k, v in full.items() if not k.startswith("projector")}
    want_backbone = weights.backbone_of(r18_cifar)
    # FAIR's torch-hub resnet50.pth: a plain torchvision state dict without fc
    assert _equal(interop.from_torch(backbone, "resnet18"), want_backbone)
    # with a classifier head and DataParallel's prefix
    parallel = {"module." + k: v for k, v in backbone.items()}
    parallel.update({"module.fc.weight": np.zeros((10, 64)), "module.fc.bias": np.zeros(10)})
    assert _equal(interop.from_torch(parallel, "resnet18"), want_backbone)
    # FAIR's checkpoint.pth: module.backbone / module.projector / module.bn, optimizer beside
    fair = {"model": {**{"module.backbone." + k: v for k, v in backbone.items()},
                      **{"module." + k: v for k, v in full.items() if k.startswith("projector")},
                      "module.bn.running_mean": np.zeros(16), "module.bn.running_var":
                      np.ones(16), "module.bn.num_batches_tracked": np.zeros((), np.int64)},
            "epoch": 3}
    assert _equal(interop.from_torch(fair, "resnet18"), r18_cifar)
    assert _equal(interop.from_torch(fair, "resnet18", projector=False), want_backbone)
    # solo-learn: state_dict, backbone.* / projector.* with biases, an online classifier
    solo = {"state_dict": {**{"backbone." + k: v for k, v in backbone.items()},
                           **{k: v for k, v in full.items() if k.startswith("projector")},
                           "projector.0.bias": np.zeros(32), "projector.3.bias": np.zeros(32),
                           "projector.6.bias": np.zeros(16),
                           "classifier.weight": np.zeros((10, 64)),
                           "classifier.bias": np.zeros(10)}}
    with pytest.raises(ConfigError, match=r"projector Linears have biases \(projector.0.bias, "
                       r"projector.3.bias, projector.6.bias\).*projector=False"):
        interop.from_torch(solo, "resnet18")
    assert _equal(interop.from_torch(solo, "resnet18", projector=False), want_backbone)


def test_the_stem_and_width_are_inferred_from_conv1():
    for stem, size in (("imagenet", 32), ("cifar", 8)):
        variables = _random_variables(make_backbone("resnet18", stem=stem, width=0.5),
                                      jnp.zeros((1, size, size, 3)))
        state = interop.to_torch(variables, "resnet18")
        assert interop.infer_backbone(state) == {"stem": stem, "width": 0.5}
        assert interop.infer_arch(state) == "resnet18"
        assert _equal(interop.from_torch(state, "resnet18"), variables)


def test_mismatches_name_the_keys(r18_cifar):
    state = interop.to_torch(weights.backbone_of(r18_cifar), "resnet18")
    with pytest.raises(ConfigError, match=r"missing keys: layer1.0.bn3.bias, .* and \d+ more"):
        interop.from_torch(state, "resnet50")
    missing = {k: v for k, v in state.items() if k != "layer4.1.bn2.running_mean"}
    with pytest.raises(ConfigError, match=r"missing keys: layer4.1.bn2.running_mean\b"):
        interop.from_torch(missing, "resnet18")
    extra = {**state, "layer9.0.conv1.weight": np.zeros((3, 3, 1, 1))}
    with pytest.raises(ConfigError, match=r"unexpected keys: layer9.0.conv1.weight\b"):
        interop.from_torch(extra, "resnet18")
    wrong = {**state, "layer1.0.conv2.weight": np.zeros((16, 16, 1, 1), np.float32)}
    with pytest.raises(ConfigError, match=r"wrong shapes layer1.0.conv2.weight: \(16, 16, 1, "
                       r"1\) \(want \(16, 16, 3, 3\)\)"):
        interop.from_torch(wrong, "resnet18")
    with pytest.raises(ConfigError, match=r"Unknown arch 'resnet101'"):
        interop.from_torch(state, "resnet101")
    with pytest.raises(ConfigError, match="not a torchvision-layout ResNet"):
        interop.from_torch({"encoder.weight": np.zeros(3)}, "resnet18")
    with pytest.raises(ConfigError, match="is a str, not a tensor"):
        interop.from_torch({**state, "note": "hello"}, "resnet18")
    with pytest.raises(ConfigError, match="not bt_jax's resnet34"):
        interop.to_torch(weights.backbone_of(r18_cifar), "resnet34")


def _torch_resnet(arch: str, stem: str, width: float):
    """(a PyTorch ResNet without its head, whose code it is): torchvision's own model code
    where a torchvision wheel is at hand (tests/torchvision_models.py; .ci/run fetches
    one), else experiments/torch_reference.py (the same module names, checked against
    torchvision's in test_torch_reference_has_torchvision_s_names)."""
    import torch
    wheel = torchvision_models.find_wheel()
    if wheel and stem == "imagenet" and width == 1.0:
        net = getattr(torchvision_models.load_resnet_module(wheel), arch)()
        net.fc = torch.nn.Identity()
        return net, "torchvision " + os.path.basename(wheel)
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import torch_reference   # noqa: E402
    return torch_reference.ResNet(arch, stem=stem, width=width), "experiments/torch_reference.py"


def _torch_forward_matches(arch: str, stem: str, width: float, size: int, tmp_path):
    """A PyTorch ResNet with random weights and BN statistics, saved as .pth, converted to
    backbone.msgpack by `python -m bt_jax.convert`: the same features in eval and train
    mode; converted back to .pth it loads into a fresh torchvision-layout model with
    strict=False (only fc.* missing) and gives the same outputs."""
    import torch
    torch.manual_seed(0)
    net, source = _torch_resnet(arch, stem, width)
    print("PyTorch model:", source)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    assert convert.main([str(tmp_path / "net.pth"), str(tmp_path / "backbone.msgpack")]) == 0
    variables, found = weights.read_variables(str(tmp_path / "backbone.msgpack"))
    assert found == arch
    backbone = make_backbone(arch, stem=stem, width=width, zero_init_residual=False)
    # 16 images: in train mode the last stage's BatchNorm normalises over 16 values per
    # channel; with 4, PyTorch's own float32 output is 6e-5 from its float64 one.
    x = np.random.default_rng(1).normal(size=(16, size, size, 3)).astype(np.float32)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    net64 = copy.deepcopy(net).double()
    for train in (False, True):
        net.train(train)
        net64.train(train)
        with torch.no_grad():
            want = net(x_torch).numpy()
            exact = net64(x_torch.double()).numpy()   # float64: the reference for both
        if train:
            got, _ = backbone.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            got = backbone.apply(variables, x, train=False)

        def rel(a):
            return np.max(np.abs(np.asarray(a, np.float64) - exact)) / np.max(np.abs(exact))
        # 1e-5 relative, or PyTorch's own float32 error where that is larger (train mode of
        # a ResNet-50 with random BN: batch statistics over 16 x 1 x 1 values per channel
        # in the last stage put PyTorch's float32 output 5e-5 to 9e-5 from its float64 one)
        assert rel(got) < max(1e-5, 2 * rel(want)), (arch, train, rel(got), rel(want))
        assert rel(want) < 2e-4
    # back to PyTorch: a fresh model with its classifier head loads it, missing only fc.*
    assert convert.main([str(tmp_path / "backbone.msgpack"), str(tmp_path / "back.pth")]) == 0
    fresh, _ = _torch_resnet(arch, stem, width)
    if "torchvision" in source:
        fresh.fc = torch.nn.Linear(fresh.layer4[-1].conv1.in_channels, 1000)
    result = fresh.load_state_dict(torch.load(tmp_path / "back.pth"), strict=False)
    assert sorted(result.missing_keys) == (["fc.bias", "fc.weight"] if "torchvision" in source
                                           else []) and not result.unexpected_keys
    fresh.fc = torch.nn.Identity()
    original, _ = _torch_resnet(arch, stem, width)   # net's running statistics moved in train mode
    original.load_state_dict(torch.load(tmp_path / "net.pth"))
    original.eval()
    fresh.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(x_torch).numpy(), original(x_torch).numpy())


@pytest.mark.torch
def test_torch_reference_has_torchvision_s_names():
    wheel = torchvision_models.find_wheel()
    if not wheel:
        pytest.skip("no torchvision wheel in .venv/wheels (.ci/run fetches one)")
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import torch_reference   # noqa: E402
    module = torchvision_models.load_resnet_module(wheel)
    for arch in ("resnet18", "resnet34", "resnet50"):
        names = set(getattr(module, arch)().state_dict())
        assert names - set(torch_reference.ResNet(arch).state_dict()) == {"fc.weight", "fc.bias"}
        assert set(torch_reference.ResNet(arch).state_dict()) <= names


@pytest.mark.torch
def test_resnet18_forward_equals_pytorch_in_eval_and_train_mode(tmp_path):
    _torch_forward_matches("resnet18", "imagenet", 1.0, 32, tmp_path)


@pytest.mark.slow
@pytest.mark.torch
def test_resnet50_forward_equals_pytorch_in_eval_and_train_mode(tmp_path):
    _torch_forward_matches("resnet50", "imagenet", 1.0, 32, tmp_path)


def test_safetensors_is_the_format_of_its_spec(tmp_path):
    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b.num_batches_tracked": np.array(7, np.int64)}
    path = str(tmp_path / "t.safetensors")
    weights.write_safetensors(path, tensors)
    raw = open(path, "rb").read()
    length = int.from_bytes(raw[:8], "little")
    assert length % 8 == 0 and raw[8:9] == b"{"
    assert raw[8 + length:8 + length + 24] == tensors["a.weight"].tobytes()
    back = weights.read_safetensors(path)
    assert back.keys() == tensors.keys()
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype
               for k, v in tensors.items())
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        weights.read_safetensors(str(tmp_path / "bad.safetensors"))


@pytest.mark.torch
def test_convert_command_both_ways_through_every_format(r18_cifar, tmp_path, capsys):
    src = str(tmp_path / "src.safetensors")
    weights.write_safetensors(src, interop.to_torch(r18_cifar, "resnet18", projector=True))
    chain = [src, str(tmp_path / "a.pth"), str(tmp_path / "b.safetensors"),
             str(tmp_path / "c.msgpack"), str(tmp_path / "d.pt")]
    # the command itself once (python -m), the rest of the chain in this process
    out = subprocess.run([sys.executable, "-m", "bt_jax.convert", chain[0], chain[1]],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Wrote" in out.stdout, out.stderr
    for a, b in zip(chain[1:], chain[2:]):
        assert convert.main([a, b]) == 0
    full, _ = weights.read_variables(chain[2])
    assert _equal(full, r18_cifar)                               # projector kept until .msgpack
    final, arch = weights.read_variables(chain[-1])
    assert arch == "resnet18" and _equal(final, weights.backbone_of(r18_cifar))
    capsys.readouterr()
    assert convert.main([src, str(tmp_path / "x.h5")]) == 2
    assert "unknown format '.h5'" in capsys.readouterr().err


def _digits_config():
    from bt_jax import config as config_lib
    c = config_lib.base_config()
    c.batch_size = 64
    c.num_steps = 1
    c.data.name, c.data.image_size = "digits", 16
    c.data.augment.blur_sigma = (0.1, 1.0)
    c.model.backbone, c.model.stem, c.model.width = "resnet18", "cifar", 0.0625
    c.model.projector_dims = (32, 32)
    c.optim.warmup_epochs = 0
    c.eval.linear_protocol, c.eval.linear_sgd.epochs, c.eval.finetune.fractions = "linear_fast", 0, ()
    c.eval.knn.k, c.eval.linear_fast.max_iter, c.eval.tsne_points = 20, 50, 0
    c.monitor.diagnostics_every_steps = 0
    return c


def _weights_file(tmp_path, c, name="w.safetensors", width=None, projector=True):
    model = BarlowTwins(backbone=make_backbone(c.model.backbone, stem=c.model.stem,
                                               width=width or c.model.width),
                        projector_dims=tuple(c.model.projector_dims))
    variables = _random_variables(model, jnp.zeros((2, 16, 16, 3)), seed=3)
    path = str(tmp_path / name)
    weights.write_variables(path, variables, c.model.backbone, projector=projector)
    return path, variables


def _fresh_state(c):
    """A TrainState of c's model, every variable zero (built from shapes: no compilation)."""
    from bt_jax import train
    shapes = jax.eval_shape(lambda: train.create_model(c.model).init(
        jax.random.key(0), jnp.zeros((2, 16, 16, 3)), train=False))
    v = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return train.TrainState(step=jnp.zeros([], jnp.int32), params=v["params"],
                            batch_stats=v["batch_stats"], opt_state=None)


def test_init_from_loads_the_backbone_and_a_fitting_projector(tmp_path):
    from bt_jax import train
    c = _digits_config()
    path, want = _weights_file(tmp_path, c)
    c.model.init_from = path
    loaded = train.state.init_from_file(_fresh_state(c), c.model)
    got = {"params": loaded.params, "batch_stats": loaded.batch_stats}
    assert _equal(jax.device_get(got), want)
    # a projector of another width stays as initialised; a backbone of another width is refused
    c.model.projector_dims = (16, 16)
    state = _fresh_state(c)
    loaded = train.state.init_from_file(state, c.model)
    assert _equal(jax.device_get(loaded.params["backbone"]), want["params"]["backbone"])
    assert _equal(jax.device_get(loaded.params["projector"]), jax.device_get(
        state.params["projector"]))
    c.model.width = 0.125
    with pytest.raises(ConfigError, match=r"holds another network: model.width: 0.125 "
                       r"\(weights: 0.0625\)"):
        train.state.init_from_file(_fresh_state(c), c.model)


def test_init_from_that_does_not_exist_is_a_config_error():
    from bt_jax import config as config_lib
    c = _digits_config()
    c.model.init_from = "/no/such/weights.pth"
    with pytest.raises(ConfigError, match="model.init_from='/no/such/weights.pth' does not exist"):
        config_lib.validate(c)


@pytest.mark.slow
@pytest.mark.torch
def test_evaluate_backbone_and_train_from_pytorch_weights(tmp_path):
    """A .pth file: `python -m bt_jax.evaluate --backbone` scores it as the end-of-run
    evaluation scores the same weights, and `--config.model.init_from` trains from it."""
    from bt_jax import train
    from bt_jax.evals import runner
    c = _digits_config()
    c.eval.baselines = False
    path, want = _weights_file(tmp_path, c, "w.pth", projector=False)
    out = subprocess.run(
        [sys.executable, "-m", "bt_jax.evaluate", "--backbone", path, "--config",
         os.path.join(ROOT, "configs", "digits.py"), "--config.model.width=0.25",
         "--config.data.image_size=16", "--config.eval.baselines=False",
         "--config.eval.finetune.fractions=()", "--config.eval.knn.k=20",
         "--workdir", str(tmp_path / "eval")], cwd=ROOT, capture_output=True, text=True,
        timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model.width: 0.25 (weights: 0.0625)" in out.stdout
    import json
    got = json.load(open(tmp_path / "eval" / "results.json"))
    import importlib.util
    from bt_jax.data import sources
    spec = importlib.util.spec_from_file_location("digits", os.path.join(ROOT, "configs",
                                                                         "digits.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    r = recipe.get_config()
    r.model.width, r.data.image_size, r.eval.baselines = 0.0625, 16, False
    r.eval.finetune.fractions, r.eval.knn.k = (), 20
    train_split, test_split = sources.labelled_splits(r.data, r.seed)
    backbone = train.create_model(r.model).backbone
    ref = runner.evaluate_all(r.eval, backbone, weights.backbone_of(want),
                              weights.backbone_of(want), train_split, test_split,
                              sources.pretrain_split(r.data, r.seed).normalization_stats(),
                              seed=r.seed, image_size=r.data.image_size)
    assert got["knn_top1"] == ref["knn_top1"] and got["linear_top1"] == ref["linear_top1"]
    # training from the same file: with learning rates 0 the weights stay the file's
    c = _digits_config()
    c.model.init_from = path
    c.optim.lr_weights = c.optim.lr_biases = 0.0
    c.eval.enabled = False
    c.monitor.online_probe = False
    train.train_and_evaluate(c, str(tmp_path / "run"))
    from bt_jax.io import export
    _, exported = export.load_backbone(str(tmp_path / "run"))
    assert _equal(exported["params"], want["params"]["backbone"])
