"""One writer per workdir: the lock a run's chief takes before it writes anything there.

    with WorkdirLock(workdir, purpose="training"):   # WorkdirLocked if another run holds it
        ...                                          # write checkpoints, metrics, results

The lock is WORKDIR/run.lock, a small JSON record of its holder (host, process id, start
time, command), held in one of two ways:

- `fcntl` (local disks and shared filesystems with file locks: ext4, xfs, NFS through its
  lock manager, Lustre mounted with `flock`, GPFS): an exclusive `flock` on the open file
  (per open file, so two lockers in one process exclude each other too). The kernel (or
  the NFS server) drops it when the holding process ends, however it ends, so a SIGKILLed
  run never blocks its rerun.
- `create` (filesystems without file locks, and object stores: gs://, s3://): the record
  is created exclusively (O_EXCL; on GCS an upload that the store refuses where the object
  exists, bt_jax.io.storage.create_exclusive) and its `heartbeat` refreshed every
  HEARTBEAT_SECONDS by a thread. It is stale once its
  process is gone: on the same host, when that process id no longer runs (or runs another
  program, started at another time); from another host, when the heartbeat is older than
  STALE_SECONDS. A stale record is replaced.

A lock that cannot be taken raises `WorkdirLocked`, one line naming the holder. Taking the
lock creates the workdir if needed; `release(failed=True)` removes a workdir the lock
created when nothing but the lock was written into it (a run that failed its checks leaves
nothing behind). Imports nothing of bt_jax but run_dir, storage and errors.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from typing import Optional

from bt_jax.io import run_dir, storage
from bt_jax.errors import ConfigError

LOCK_FILE = run_dir.LOCK
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0      # ten missed heartbeats: the holder on another host is gone
_RECORD_BYTES = 2048
# flock's errors where the filesystem has no file locks: use the `create` protocol there.
_NO_POSIX_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class WorkdirLocked(ConfigError):
    """Another live process holds the workdir's lock."""


def _process_start(pid: int) -> Optional[int]:
    """The start time of process pid in clock ticks since boot (/proc/PID/stat, field 22),
    or None where /proc does not say: with the pid, it names one process over the boot."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def own_record(purpose: str) -> dict:
    """The holder record of this process: host, pid, its start time, the command."""
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "purpose": purpose,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)[:500],
            "started": now, "heartbeat": now}


def is_stale(record: dict, now: Optional[float] = None,
             stale_seconds: float = STALE_SECONDS) -> bool:
    """Whether the holder of `record` is gone: on this host, its process no longer runs (or
    the pid now names another process); on another host, no heartbeat for stale_seconds."""
    if record.get("host") == socket.gethostname():
        pid = record.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return True
        start = record.get("pid_start")
        return start is not None and _process_start(pid) not in (None, start)
    now = time.time() if now is None else now
    return now - float(record.get("heartbeat", 0.0)) > stale_seconds


def describe(record: Optional[dict]) -> str:
    """'process 1234 on host "node-7" (training since 2026-12-06 13:01 UTC: python -m ...)'."""
    if not record:
        return "another process (its record is unreadable)"
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.get("started", 0)))
    return (f"process {record.get('pid')} on host {record.get('host')!r} "
            f"({record.get('purpose', 'a run')} since {since}: {record.get('command', '?')})")


def _read_record(path: str) -> Optional[dict]:
    try:
        record = json.loads(storage.read_text(path))
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


class WorkdirLock:
    """The lock of one workdir (module docstring). method: "auto" (fcntl, else create where
    the filesystem has no POSIX locks), "fcntl" or "create"."""

    def __init__(self, workdir: str, *, purpose: str = "training", method: str = "auto"):
        if method not in ("auto", "fcntl", "create"):
            raise ValueError(f"method must be 'auto', 'fcntl' or 'create'; got {method!r}.")
        self.workdir = workdir
        self.path = storage.join(workdir, LOCK_FILE)
        self.remote = storage.is_remote(workdir)   # an object store: the create protocol
        self.purpose = purpose
        self.method = method
        self._fd: Optional[int] = None
        self._held_object = False
        self._created: list[str] = []     # folders the lock created, deepest last
        self._stop = threading.Event()
        self._heart: Optional[threading.Thread] = None
        self.record: Optional[dict] = None

    # -- taking it --------------------------------------------------------------------
    def acquire(self) -> "WorkdirLock":
        """Takes the lock (creating the workdir) or raises WorkdirLocked naming the holder."""
        self._make_workdir()
        try:
            if self.remote:
                self._acquire_object()
                return self
            if self.method in ("auto", "fcntl"):
                try:
                    self._acquire_fcntl()
                    return self
                except OSError as e:
                    if self.method == "fcntl" or e.errno not in _NO_POSIX_LOCKS:
                        raise
                    self._close_fd()
            self._acquire_create()
            return self
        except WorkdirLocked:
            self._remove_created()
            raise
        except OSError as e:
            self._remove_created()
            raise ConfigError(f"Cannot take the lock {self.path!r} ({e.strerror or e}): "
                              "choose a --workdir you can write to.") from None

    def _make_workdir(self) -> None:
        if self.remote:      # an object store has no folders to make
            return
        missing, path = [], os.path.abspath(self.workdir)
        while not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"Cannot write into --workdir {self.workdir!r} "
                              f"({e.strerror or e}): choose a directory you can write "
                              "to.") from None
        self._created = missing[::-1]

    def _locked_error(self, record: Optional[dict]) -> WorkdirLocked:
        return WorkdirLocked(
            f"--workdir {self.workdir!r} is in use by {describe(record)}. One run writes "
            "into a workdir at a time: wait for it to end (or stop it), or choose another "
            f"--workdir. The lock ({LOCK_FILE}) is released when that process ends.")

    def _acquire_fcntl(self) -> None:
        import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise self._locked_error(self._holder_after_wait()) from None
                raise
            try:   # the file we locked may have been removed by its releasing holder
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._write_record(own_record(self.purpose))
                return
            os.close(fd)
        raise OSError(errno.EAGAIN, "the lock file kept changing")

    def _holder_after_wait(self) -> Optional[dict]:
        """The holder's record; a holder that has just taken the lock writes it right after,
        so an empty or a stale-looking record is read again briefly."""
        record = None
        for _ in range(20):
            record = _read_record(self.path)
            if record and not is_stale(record):
                return record
            time.sleep(0.05)
        return record

    def _acquire_create(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                record = _read_record(self.path)
                if record is None:        # being written right now, or garbage
                    time.sleep(0.1)
                    record = _read_record(self.path)
                if record is not None and not is_stale(record):
                    raise self._locked_error(record) from None
                self._break_stale(record)
                continue
            self._fd = fd
            self._write_record(own_record(self.purpose))
            self._heart = threading.Thread(target=self._beat, daemon=True,
                                           name="workdir-lock-heartbeat")
            self._heart.start()
            return
        raise OSError(errno.EAGAIN, "the lock file kept changing")

    def _acquire_object(self) -> None:
        """The create protocol on an object store: an exclusive upload of the record."""
        for _ in range(10):
            record = own_record(self.purpose)
            if storage.create_exclusive(self.path, json.dumps(record, indent=1).encode()):
                self._held_object, self.record = True, record
                self._heart = threading.Thread(target=self._beat, daemon=True,
                                               name="workdir-lock-heartbeat")
                self._heart.start()
                return
            holder = _read_record(self.path)
            if holder is None:        # being written right now, or garbage
                time.sleep(0.2)
                holder = _read_record(self.path)
            if holder is not None and not is_stale(holder):
                raise self._locked_error(holder)
            if _read_record(self.path) == holder:   # still the record judged stale
                storage.remove(self.path)
        raise OSError(errno.EAGAIN, "the lock object kept changing")

    def _break_stale(self, record: Optional[dict]) -> None:
        """Removes a stale record, unless another process replaced it meanwhile."""
        aside = f"{self.path}.stale.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_record(aside) != record:   # not the record judged stale: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.remove(aside)

    def _write_record(self, record: dict) -> None:
        """Writes the record over the old one in place, padded with spaces to a fixed size
        (JSON ignores them): a reader never finds the file empty between two writes."""
        data = json.dumps(record, indent=1).encode()
        if self._held_object:        # one upload replaces the object whole
            storage.write_atomic(self.path, data)
            self.record = record
            return
        data += b" " * max(0, _RECORD_BYTES - len(data))
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)
        self.record = record

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write_record({**self.record, "heartbeat": time.time()})
            except (OSError, TypeError):
                return

    # -- giving it back ---------------------------------------------------------------
    def release(self, *, failed: bool = False) -> None:
        """Gives the lock back and removes run.lock. failed: also remove the workdir (and
        the folders above it) that acquire created, where nothing else was written."""
        if self._fd is None and not self._held_object:
            return
        self._stop.set()
        if self._heart is not None:
            self._heart.join()
        if self._held_object:
            storage.remove(self.path)
            self._held_object = False
            return
        try:
            os.remove(self.path)    # before unlocking: no one can lock a removed file
        except FileNotFoundError:
            pass
        self._close_fd()
        if failed:
            self._remove_created()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing drops the flock
            self._fd = None

    def _remove_created(self) -> None:
        for path in reversed(self._created):
            try:
                os.rmdir(path)    # only if empty
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)
