"""One filesystem layer for every path a run reads or writes: local paths exactly as the
os module handles them, and object stores (gs://, s3://) through etils.epath, the layer
Orbax already uses for its checkpoints.

Local writes stay atomic (a temporary file and a rename); an object store's write is one
upload, atomic by itself. An object store has no append: `append_text` rewrites the object.
Emulators: where STORAGE_EMULATOR_HOST names a GCS emulator, `use_emulators` (called when
bt_jax is imported) points every client at it: gcsfs reads that variable itself, epath is
told to use gcsfs rather than tf.io.gfile (which reads no emulator setting; EPATH_USE_TF),
and TensorStore, which writes Orbax's arrays, gets TENSORSTORE_GCS_HTTP_URL and a test
token. Variables the user set are left as they are. Imports nothing of bt_jax but errors.
"""
from __future__ import annotations

import os
import threading
from typing import Union

from bt_jax.errors import ConfigError

SCHEMES = ("gs", "s3")   # object stores epath reaches through fsspec (gcsfs, s3fs)


def use_emulators(environ=os.environ) -> None:
    """Points epath and TensorStore at the GCS emulator STORAGE_EMULATOR_HOST names, if any
    (setdefault: a variable already set wins)."""
    host = environ.get("STORAGE_EMULATOR_HOST", "")
    if not host:
        return
    url = host if "://" in host else f"http://{host}"
    environ.setdefault("EPATH_USE_TF", "false")
    environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")


def scheme(path: str) -> str:
    """"gs", "s3", another URL scheme, or "" for a local path."""
    head, sep, _ = str(path).partition("://")
    return head if sep and "/" not in head else ""


def is_remote(path: str) -> bool:
    return scheme(path) != ""


def check_scheme(path: str, flag: str) -> None:
    """ConfigError (one line) where `path` names a scheme this layer cannot reach."""
    s = scheme(path)
    if s and s not in SCHEMES:
        raise ConfigError(f"{flag} {path!r}: unknown storage scheme {s + '://'!r}. Use a local "
                          f"path, gs://BUCKET/... or s3://BUCKET/....")


def join(base: str, *names: str) -> str:
    """base/name/..., for local paths and URLs alike."""
    if not is_remote(base):
        return os.path.join(base, *names)
    return "/".join([str(base).rstrip("/"), *names])


def _epath(path: str):
    from etils import epath  # pylint: disable=import-outside-toplevel
    return epath.Path(path)


def exists(path: str) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
    if is_remote(path):
        p = _epath(path)
        return p.exists() and not p.is_dir()
    return os.path.isfile(path)


def makedirs(path: str) -> None:
    """The folder and its parents (an object store has no folders: nothing to do)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in a folder; [] where it does not exist."""
    if is_remote(path):
        p = _epath(path)
        return sorted(c.name for c in p.iterdir()) if p.exists() else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_bytes(path: str) -> bytes:
    """The file's bytes; FileNotFoundError where it is missing."""
    if is_remote(path):
        return _epath(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Writes `data` so that a reader, or a run killed midway, never sees half of it: a
    temporary file and a rename locally, one upload to an object store."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(path):
        _epath(path).write_bytes(raw)
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)


def append_text(path: str, text: str) -> None:
    """Appends `text`: locally with the file's append mode; on an object store (which has
    none) by rewriting the object with `text` at its end."""
    if is_remote(path):
        old = read_bytes(path) if exists(path) else b""
        write_atomic(path, old + text.encode("utf-8"))
        return
    with open(path, "a") as f:
        f.write(text)


def remove(path: str) -> None:
    """Removes a file or object; nothing where it is missing."""
    try:
        if is_remote(path):
            _epath(path).unlink()
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates the file with `data` only where it does not exist: True if this call made
    it, False if it was there. Locally O_CREAT | O_EXCL; on GCS an upload with the
    precondition ifGenerationMatch=0 (gcsfs's mode="create"), which the store refuses
    where the object exists."""
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    import fsspec  # pylint: disable=import-outside-toplevel
    fs, _, (target,) = fsspec.get_fs_token_paths(path)
    fs.invalidate_cache()
    if fs.exists(target):
        return False
    try:
        fs.pipe_file(target, data, mode="create")
    except (FileExistsError, OSError) as e:
        if isinstance(e, FileExistsError) or "412" in str(e) or "exists" in str(e).lower():
            return False
        raise
    # A store that ignores the precondition (some emulators) lets a racing writer replace
    # the object: the one whose bytes are there holds it.
    fs.invalidate_cache()
    return fs.cat_file(target) == data


REACH_TIMEOUT_S = 30.0


def check_reachable(path: str, flag: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """ConfigError (one line) unless the bucket of `path` answers a listing within
    `timeout` seconds: a wrong bucket name, missing credentials or no network stop the
    command before it writes anything."""
    bucket = str(path).split("://", 1)[1].split("/", 1)[0]
    root = f"{scheme(path)}://{bucket}"
    if not bucket:
        raise ConfigError(f"{flag} {path!r} names no bucket: write {scheme(path)}://BUCKET/...")

    outcome: list = []

    def probe():
        import logging  # pylint: disable=import-outside-toplevel
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)   # its retries' tracebacks
        try:
            import fsspec  # pylint: disable=import-outside-toplevel
            fs, _, (target,) = fsspec.get_fs_token_paths(root)
            fs.ls(target, detail=False)
            outcome.append(None)
        except Exception as e:  # pylint: disable=broad-except  (clients raise many kinds)
            outcome.append(e)

    thread = threading.Thread(target=probe, daemon=True)   # a hung client keeps no exit
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return
    e = outcome[0] if outcome else None
    cause = (f"no answer in {timeout:g} s" if e is None else
             f"{e.name} is not installed: pip install 'bt_jax[{scheme(path)}]'"
             if isinstance(e, ImportError) else
             f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    raise ConfigError(f"{flag} {path!r}: the bucket {root!r} cannot be reached ({cause}). "
                      "Check the bucket's name, your credentials (gcloud auth "
                      "application-default login) and the network"
                      + (f", or the emulator at STORAGE_EMULATOR_HOST={emulator!r}"
                         if emulator else "") + ".")


def write_figure(fig, path: str, dpi: int = 100) -> None:
    """A matplotlib figure saved as PNG at `path` (local or object store), atomically."""
    import io  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomic(path, buffer.getvalue())


def copy_tree(local_dir: str, dest: str) -> None:
    """Every file under local_dir written to the same relative path under `dest` (a local
    folder or an object store)."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        target = dest if rel == "." else join(dest, *rel.split(os.sep))
        makedirs(target)
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                write_atomic(join(target, name), f.read())
