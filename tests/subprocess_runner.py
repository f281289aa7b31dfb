"""Runs a Python snippet in a fresh process with N logical CPU devices and returns what it reports.

Two MirroredStrategy objects with different device counts clash in one process (collective group keys),
so each replica count runs in its own process. The snippet reports by calling `report(obj)`, which prints
`obj` as JSON on a marked line; numpy arrays become nested lists.
"""
import json
import os
import subprocess
import sys
import textwrap

_MARK = "@@REPORT@@"

_PRELUDE = """
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
if {num_devices} > 1:
  tf.config.set_logical_device_configuration(
      _cpu, [tf.config.LogicalDeviceConfiguration()] * {num_devices})
def _to_json(o):
  if hasattr(o, "numpy"):
    o = o.numpy()
  if isinstance(o, np.ndarray) or isinstance(o, np.generic):
    return o.tolist()
  raise TypeError(type(o))
def report(obj):
  print("{mark}" + json.dumps(obj, default=_to_json), flush=True)
"""

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(snippet, num_devices=1, timeout=600, env=None):
    """Runs `snippet` with `num_devices` logical CPU devices; returns the object passed to report()."""
    code = _PRELUDE.format(num_devices=num_devices, mark=_MARK) + textwrap.dedent(snippet)
    proc_env = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                timeout=timeout, env=proc_env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    reports = [line[len(_MARK):] for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if len(reports) != 1:
        raise AssertionError(f"expected one report, got {len(reports)}:\n{proc.stdout[-2000:]}")
    return json.loads(reports[0])
