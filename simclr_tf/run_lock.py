"""One writing process per model_dir: `model_dir/run.lock` records who holds the run (host, pid, start time).

A run that trains, exports or converts takes the lock before it writes anything and releases it when it
ends (normally, on an error or on Ctrl-C). A lock left by a process that no longer exists on this host (a
SIGKILL, a crash, a power cut) is taken over with a warning; a lock held by a live process, or by a process
on another host (whose liveness this host cannot see), is refused with a message naming the holder.
`--mode=eval` takes no lock: it only reads checkpoints, and may watch a run that is training.
Under a multi-worker strategy only the chief takes the lock (the other workers write nothing).

The lock file is created with O_CREAT|O_EXCL, so of two processes starting together exactly one wins.
"""
import json
import os
import socket
import time

from absl import logging

from simclr_tf.config import ConfigError
from simclr_tf.persistence import run_dir

LOCK_FILE = run_dir.LOCK_FILE
_HELD = set()  # real paths of the locks this process holds


class RunLockedError(ConfigError):
    """Another live process holds the model_dir's lock; the message names it and the fix."""


def _process_start_time(pid):
    """When process `pid` started (seconds since the epoch), from Linux's /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder_alive(pid, start_time, path):
    """Whether the process that wrote the lock at `path` at `start_time` still runs as `pid` here."""
    if pid == os.getpid():  # This process, or a killed run whose pid a restarted container reused.
        return os.path.realpath(path) in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by another user.
        pass
    started = _process_start_time(pid)
    # A process that started after the lock was written is another one that reuses the pid.
    return started is None or not isinstance(start_time, (int, float)) or started <= start_time + 2


def _describe(holder):
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("start_time", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}"


class RunLock:
    """`model_dir/run.lock`, held by this process between `acquire()` and `release()`.

    Example:
      >>> import tempfile
      >>> model_dir = tempfile.mkdtemp()
      >>> lock = RunLock(model_dir).acquire()
      >>> sorted(json.load(open(os.path.join(model_dir, LOCK_FILE))))
      ['host', 'pid', 'start_time']
      >>> RunLock(model_dir).acquire()  # a second process (here: a second lock object) is refused
      Traceback (most recent call last):
      ...
      simclr_tf.run_lock.RunLockedError: ...
      >>> lock.release()
      >>> os.listdir(model_dir)
      []
    """

    def __init__(self, model_dir):
        self.path = run_dir.lock_path(model_dir)
        self.held = False

    def _create(self):
        record = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": time.time()}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        self.held = True
        _HELD.add(os.path.realpath(self.path))

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # Empty or garbled: written by a process killed while creating it.

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):  # A takeover or a release racing with us: look again.
            try:
                self._create()
                return self
            except FileExistsError:
                pass
            holder = self._read()
            if holder is None:
                continue
            same_host = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            if holder and (not same_host or not isinstance(pid, int)
                           or _holder_alive(pid, holder.get("start_time"), self.path)):
                where = "" if same_host else (" (another host: this one cannot tell whether it still "
                                              "runs)")
                raise RunLockedError(
                    f"{os.path.dirname(self.path)} is in use by another run: {_describe(holder)}{where}. "
                    "Two runs on one --model_dir overwrite each other's checkpoints. Wait for it to end "
                    f"or stop it, or use another --model_dir; if it is certainly gone, delete {self.path}.")
            logging.warning("Taking over %s: the run that held it (%s) no longer runs.", self.path,
                            _describe(holder) if holder else "unreadable lock file")
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        raise RunLockedError(f"Could not take {self.path}: other processes keep creating it. Use another "
                             "--model_dir, or stop the other runs on this one.")

    def release(self):
        if not self.held:
            return
        self.held = False
        _HELD.discard(os.path.realpath(self.path))
        holder = self._read()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
