"""The four commands share one convention (`bt_jax.cli`): --help prints the command's own
docstring and flags and exits 0; a bad flag is one line on stderr and exit status 2,
with nothing written."""
import os
import subprocess
import sys

import pytest

from stderr import own_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {   # module: (a line of its docstring, one of its own flags)
    "bt_jax.main": ("python -m bt_jax.main --config configs/digits.py", "--workdir"),
    "bt_jax.evaluate": ("python -m bt_jax.evaluate --workdir runs/demo", "--backbone"),
    "bt_jax.convert": ("python -m bt_jax.convert SRC DST", "--arch"),
    "bt_jax.plan": ("python -m bt_jax.plan --config CONFIG --topology", "--max_batch"),
}


def _run(module: str, *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_prints_the_commands_doc_and_flags_and_exits_0(module):
    r = _run(module, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    doc_line, flag = COMMANDS[module]
    assert doc_line in r.stdout and f"  {flag}:" in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_a_bad_flag_is_one_line_and_status_2(module, tmp_path):
    args = {"bt_jax.main": ["--config", "configs/digits.py", "--workdir", str(tmp_path / "w")],
            "bt_jax.evaluate": ["--backbone", str(tmp_path / "a.msgpack"), "--config",
                                "configs/digits.py", "--workdir", str(tmp_path / "w")],
            "bt_jax.convert": [str(tmp_path / "a.msgpack"), str(tmp_path / "b.pth")],
            "bt_jax.plan": ["--config", "configs/digits.py", "--topology", "local",
                            "--out", str(tmp_path / "w")]}[module]
    r = _run(module, *args, "--no_such_flag=1")
    lines = own_lines(r.stderr)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[-1].startswith("error: "), r.stderr[-2000:]
    assert "no_such_flag" in lines[-1]
    assert os.listdir(tmp_path) == []


def test_hyphenated_flags_and_booleans_read_as_absls(tmp_path):
    """--max-batch, --no-projector: hyphens are accepted for underscores everywhere."""
    from bt_jax import cli
    assert cli.normalise(["p", "--max-batch", "--no-projector", "--batch-step=4",
                          "--config.model.conv_impl=xla", "some-file.pth"]) == [
        "p", "--max_batch", "--noprojector", "--batch_step=4",
        "--config.model.conv_impl=xla", "some-file.pth"]
    r = _run("bt_jax.convert", str(tmp_path / "a.msgpack"), str(tmp_path / "b.pth"),
             "--no-projector", "--arch=resnet18")
    assert r.returncode == 2 and "does not exist" in r.stderr      # parsed, then the file
    r = _run("bt_jax.convert", str(tmp_path / "a.msgpack"))
    assert r.returncode == 2 and "pass SRC and DST" in r.stderr
