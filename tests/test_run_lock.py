"""One writing process per model_dir: the lock is taken, refused while its holder lives, taken over (with
a warning) once it is dead, and released."""
import json
import os
import socket
import subprocess
import sys

import pytest

from simclr_tf import run_lock


def write_lock(model_dir, pid, host=None):
    with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
        json.dump({"host": host or socket.gethostname(), "pid": pid, "start_time": 0.0}, f)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_records_the_holder_and_is_released(tmp_path):
    lock = run_lock.RunLock(str(tmp_path)).acquire()
    record = json.load(open(tmp_path / run_lock.LOCK_FILE))
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path) == []
    with run_lock.RunLock(str(tmp_path)):  # free again
        pass


def test_a_live_holder_is_refused_by_name(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(str(tmp_path), sleeper.pid)
        with pytest.raises(run_lock.RunLockedError) as error:
            run_lock.RunLock(str(tmp_path)).acquire()
        message = str(error.value)
        assert f"pid {sleeper.pid} on host {socket.gethostname()}, started 1970-01-01 00:00:00 UTC" in message
        assert "use another --model_dir" in message
        assert json.load(open(tmp_path / run_lock.LOCK_FILE))["pid"] == sleeper.pid  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_from_another_host_is_refused(tmp_path):
    write_lock(str(tmp_path), dead_pid(), host="some-other-host")
    with pytest.raises(run_lock.RunLockedError, match="some-other-host, .*another host.*delete"):
        run_lock.RunLock(str(tmp_path)).acquire()


def test_the_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(str(tmp_path), pid)
    with caplog.at_level("WARNING"):
        lock = run_lock.RunLock(str(tmp_path)).acquire()
    assert f"Taking over {tmp_path / run_lock.LOCK_FILE}" in caplog.text and f"pid {pid}" in caplog.text
    assert json.load(open(tmp_path / run_lock.LOCK_FILE))["pid"] == os.getpid()
    lock.release()
    (tmp_path / run_lock.LOCK_FILE).write_text("")  # a holder killed while writing it
    with run_lock.RunLock(str(tmp_path)):
        assert json.load(open(tmp_path / run_lock.LOCK_FILE))["pid"] == os.getpid()
