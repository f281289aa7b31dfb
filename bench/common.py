"""Shared pieces of the benchmarks: the machine, repeated timing, the matrix-product peak, tables.

Benchmarks print tables and assert nothing. Absolute figures move between machines: compare against a
baseline measured in the same run.
"""
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def machine_description():
    """One line: CPU model, cores, memory, TensorFlow and Keras versions, load average now."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    import keras
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpus = len(tf.config.list_physical_devices("GPU"))
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpus} GPU(s), TF {tf.__version__}, "
            f"Keras {keras.__version__}, 1-minute load average {load:.2f} when the table was printed")


def time_repeats(fn, repeats, warmup=1):
    """Calls `fn` `warmup` times, then `repeats` times; returns the list of wall-clock seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize(times):
    """`(median, min, max)` of a list of seconds."""
    return statistics.median(times), min(times), max(times)


def matmul_peak_gflops(dtype=tf.float32, size=2048, repeats=5):
    """Best GFLOP/s of a square matrix product on this machine (the peak the training step is held to)."""
    a = tf.random.uniform([size, size], dtype=tf.float32)
    b = tf.random.uniform([size, size], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def product():
        return tf.linalg.matmul(a, b)

    times = time_repeats(lambda: product().numpy(), repeats, warmup=2)
    return 2 * size**3 / min(times) / 1e9


def print_table(title, header, rows):
    """Prints a Markdown table (so it can be pasted into bench/RESULTS.md as it is)."""
    print(f"\n### {title}\n")
    print(f"Machine: {machine_description()}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
