"""One writing process per model_dir: the lock is taken, refused while its holder lives, taken over (with
a warning) once it is dead, and released."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from simclr_tf import run_lock


def write_lock(model_dir, pid, host=None, start_time=None):
    with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
        json.dump({"host": host or socket.gethostname(), "pid": pid,
                   "start_time": time.time() if start_time is None else start_time}, f)


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
        time.sleep(0.1)
        write_lock(str(tmp_path), sleeper.pid)
        with pytest.raises(run_lock.RunLockedError) as error:
            run_lock.RunLock(str(tmp_path)).acquire()
        message = str(error.value)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert f"pid {sleeper.pid} on host {socket.gethostname()}, started {today} " in message
        assert "use another --model_dir" in message
        assert json.load(open(tmp_path / run_lock.LOCK_FILE))["pid"] == sleeper.pid  # left alone
        # The same pid in a lock older than the process: the pid was reused, the lock is stale.
        write_lock(str(tmp_path), sleeper.pid, start_time=1000.0)
        run_lock.RunLock(str(tmp_path)).acquire().release()
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
    write_lock(str(tmp_path), os.getpid())  # this pid, from a killed run in a restarted container
    run_lock.RunLock(str(tmp_path)).acquire().release()
    (tmp_path / run_lock.LOCK_FILE).write_text("")  # a holder killed while writing it
    with run_lock.RunLock(str(tmp_path)):
        assert json.load(open(tmp_path / run_lock.LOCK_FILE))["pid"] == os.getpid()
