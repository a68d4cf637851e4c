"""What a run writes and shows: the files of each recipe's run (`run_dir.run_files`, as
README.md and docs/training.md list them, and as a tiny run of the recipe's settings leaves
them), a line before and after each compile, and plots that read on their own."""
import contextlib
import fnmatch
import glob
import io
import os
import re

import pytest

import numpy as np

from bt_jax import cli, diagnostics, losses, plots, train
from bt_jax import config as config_lib
from bt_jax.io import run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in ("common.py", "__init__.py"))


def _recipe(name: str):
    return cli.load_recipe(os.path.join(ROOT, "configs", name))


def documented_files(path: str) -> dict:
    """{recipe: set of files} from the table that follows "<!-- run files -->" in path:
    its "every recipe" row, plus the files of each row that names recipes."""
    text = open(path).read()
    table = text[text.index("<!-- run files -->"):].split("\n\n")[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ")][1:]
    every, extra = set(), {}
    for recipes, files in rows:
        names = set(re.findall(r"`([^`]+)`", files))
        if recipes.strip() == "every recipe":
            every = names
        for recipe in re.findall(r"`([\w]+\.py)`", recipes):
            extra[recipe] = names
    return {recipe: every | extra.get(recipe, set()) for recipe in RECIPES}


@pytest.mark.parametrize("doc", ["README.md", os.path.join("docs", "training.md")])
def test_the_docs_list_the_files_each_recipe_writes(doc):
    listed = documented_files(os.path.join(ROOT, doc))
    assert listed == {r: set(run_dir.run_files(_recipe(r))) for r in RECIPES}
    assert run_dir.TSNE not in listed["fashion_mnist_quick.py"]     # eval.tsne_points=0
    assert run_dir.TSNE in listed["digits.py"]


def _settings(config) -> tuple:
    """The fields that decide which files a run writes."""
    return (config.eval.enabled, config.eval.tsne_points > 0, config.profile.num_steps > 0)


def _tiny(recipe: str):
    """A run of a few seconds' training with the recipe's settings that decide its files
    (`_settings`): the digits data, a ResNet-18 at 1/16 width, 16 px."""
    r = _recipe(recipe)
    c = config_lib.base_config()
    c.batch_size, c.num_steps, c.log_every_steps = 32, 3, 100   # one logged step: the last
    c.data.name, c.data.image_size = "digits", 16
    c.data.augment_on = "device"
    c.model.backbone, c.model.stem, c.model.width = "resnet18", "cifar", 0.0625
    c.model.projector_dims = (32, 32)
    c.optim.warmup_epochs = 0
    c.checkpoint.every_steps = 100
    c.monitor.knn_every_epochs = 0.05   # a kNN monitor at step 2 and at the end
    c.eval.linear_protocol = "linear_fast"
    c.eval.protocols = ("linear_fast", "knn")
    c.eval.probe_train_examples = 200
    c.eval.linear_fast.max_iter = 20
    c.eval.linear_fast.l2_grid = (1e-4,)
    c.eval.knn.k = 5
    c.eval.enabled, c.eval.tsne_points = r.eval.enabled, min(r.eval.tsne_points, 60)
    c.profile.num_steps = r.profile.num_steps
    assert _settings(c) == _settings(r)
    return c


def _train(config, workdir: str) -> str:
    """Trains config into workdir; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.train_and_evaluate(config, workdir)
    return out.getvalue()


def _left(workdir: str) -> list:
    """The workdir's entries, folders with a "/"."""
    return sorted(n + ("/" if os.path.isdir(os.path.join(workdir, n)) else "")
                  for n in os.listdir(workdir))


def _check_files(workdir: str, config) -> None:
    left, want = _left(workdir), run_dir.run_files(config)
    assert len(left) == len(want), (left, want)
    for pattern in want:
        assert len(fnmatch.filter(left, pattern)) == 1, (pattern, left)


def test_a_tiny_run_of_the_demos_settings_prints_and_writes_what_the_docs_say(tmp_path):
    """One tiny run with digits.py's settings (trained once: the checks share it): the
    files run_files names, a line before and after each compile, plots that read alone."""
    config, workdir = _tiny("digits.py"), str(tmp_path / "digits")
    out = _train(config, workdir)
    _check_files(workdir, config)
    assert run_dir.TSNE in run_dir.run_files(config)
    _check_compile_lines(out)
    _check_plots(workdir)


# One recipe of each other setting of the files (digits.py's is tested above).
SETTINGS = {r: _settings(_recipe(r)) for r in RECIPES}
OTHER_SETTINGS = sorted({s: r for r, s in SETTINGS.items() if s != SETTINGS["digits.py"]}
                        .values())


@pytest.mark.slow    # a whole training run each: about a minute on 2 cores; CI runs them
@pytest.mark.parametrize("recipe", OTHER_SETTINGS)
def test_a_tiny_run_of_each_recipes_settings_writes_the_files_listed(recipe, tmp_path):
    config = _tiny(recipe)
    _train(config, str(tmp_path / "run"))
    _check_files(str(tmp_path / "run"), config)


def _check_compile_lines(out: str) -> None:
    """Each program's compile: a line before and after, the step's before the first step."""
    lines = out.splitlines()

    def index(pattern):
        found = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line)]
        assert len(found) == 1, (pattern, out)
        return found[0]

    first_step = min(i for i, line in enumerate(lines) if line.startswith("step "))
    order = [index(r"Training resnet18 on digits: .*"),
             index(r"Compiling the on-device augmentation \.\.\."),
             index(r"Compiled the on-device augmentation in \d+\.\d s"),
             index(r"Compiling the train step \.\.\."),
             index(r"Compiled the train step in \d+\.\d s"), first_step]
    assert order == sorted(order)
    for name in ("the feature extractor", "the collapse diagnostics"):   # the kNN monitor's
        assert index(f"Compiled {name} in \\d+\\.\\d s") == index(f"Compiling {name} \\.\\.\\.") + 1
    # the evaluation's own (the random-init baseline's features; the trained encoder's
    # came from the monitor)
    start = index(r"Evaluation \| compiling the feature extractor \.\.\.")
    assert re.fullmatch(r"Evaluation \| compiled the feature extractor in \d+\.\d s",
                        lines[start + 1])


def _check_plots(workdir: str) -> None:
    """Every PNG; the curves' panels, labels, one-point markers and accuracy panel; C's
    axes."""
    for name in (run_dir.TRAINING_CURVES, run_dir.SPECTRUM, run_dir.CROSS_CORRELATION,
                 run_dir.TSNE):
        assert open(os.path.join(workdir, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    rows = plots.read_rows(workdir)
    fig = plots.training_curves_figure(rows, losses.get_objective("barlow_twins").curves,
                                       "title", "test")
    loss, on_diag, off_diag, accuracy = fig.axes
    assert [ax.get_title() for ax in (loss, accuracy)] == ["loss", plots.ACCURACY_TITLE]
    for ax in fig.axes:
        assert ax.get_xlabel() == "step" and ax.get_ylabel()
    # one logged step (log_every_steps > num_steps): a marker, and a note that says so
    (point,) = loss.get_lines()
    assert point.get_marker() == "o" and list(point.get_xdata()) == [3]
    assert [t.get_text() for t in loss.texts] == ["one logged step (step 3)"]
    # the online probe's accuracy on each logged batch and the kNN monitor's, in %
    probe, monitor = accuracy.get_lines()
    assert list(monitor.get_xdata()) == [2, 3] and list(probe.get_xdata()) == [3]
    knn = [100 * r["monitor_knn_top1"] for r in rows if "monitor_knn_top1" in r]
    assert list(monitor.get_ydata()) == pytest.approx(knn)
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == [
        "online probe, on each logged training batch", "kNN monitor, on the test split"]

    fig = diagnostics.heatmap_figure(np.eye(32, dtype=np.float32), dim=32, step=3)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "j: feature of view B's embedding"
    assert ax.get_ylabel() == "i: feature of view A's embedding"
    assert "all 32 features" in ax.get_title() and "step 3" in ax.get_title()
    title = diagnostics.heatmap_figure(np.eye(256), dim=512).axes[0].get_title()
    assert "first 128 of 512 features" in title and "on a training batch" in title


def test_a_run_without_a_probe_or_monitor_has_no_accuracy_panel():
    rows = [{"step": 5, "loss": 2.0, "on_diag": 1.0, "off_diag": 1.0}]
    specs = plots.panels(rows, losses.get_objective("barlow_twins").curves)
    assert [s["title"] for s in specs][0] == "loss" and len(specs) == 3
    assert plots.panels([], ())[0]["lines"] == [("loss", [], [])]   # nothing logged yet

