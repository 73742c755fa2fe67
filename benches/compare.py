#!/usr/bin/env python3
"""Side-by-side benchmark: the same hourly roll-up with rollq, DuckDB, polars and pandas.

Every tool reads the same CSV file (`Datetime,<value columns...>`) and writes per-hour count,
mean, std, min and max of each value column, the way its users would normally write it:

* rollq: `rollq aggregate IN -o OUT` (with `--threads 1` when the binary has that option).
* DuckDB: `date_trunc('hour', ...)` + GROUP BY over `read_csv`, on every core (its default).
* polars: two forms, `group_by_dynamic` on a lazy `scan_csv` and `dt.truncate` + `group_by`
  (lazy, streaming `sink_csv`); the faster one's median is reported, and which it was.
* pandas: `read_csv(parse_dates=...)` + `resample("h").agg(...)` + `to_csv`.

Usage:

    python3 benches/compare.py [--runs 5] [--rollq target/release/rollq] [--skip pandas] FILE...

It creates its own virtual environment (`bench-data/venv`, or `--venv DIR`) with pandas,
polars and DuckDB from pip the first time, then runs each tool once to warm up and `--runs`
times per file, the tools taking turns (rollq, DuckDB, polars, pandas, rollq, ...) so a
change in the machine's load hits them alike. Each run is a child process; its wall time is
measured around it and its CPU time (user + sys) and peak RSS come from `wait4`'s rusage.
It prints the medians and each tool's ratio to rollq (wall, CPU, RSS).

`python3 benches/compare.py --engine ENGINE IN OUT` runs one engine once (what the harness
calls in the venv; ENGINE is one of pandas, polars-dynamic, polars-truncate, duckdb).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["pandas", "polars", "duckdb"]
STATS = ["count", "mean", "std", "min", "max"]


def value_columns(src):
    """The header's columns after the first (the time column)."""
    opener = open
    if src.endswith(".gz"):
        import gzip

        opener = gzip.open
    with opener(src, "rt") as f:
        header = f.readline().strip().split(",")
    return header[0], header[1:]


def run_engine(engine, src, dst):
    """One roll-up with one engine, in this process."""
    time_col, cols = value_columns(src)
    if engine == "pandas":
        import pandas as pd

        df = pd.read_csv(src, parse_dates=[time_col], index_col=time_col)
        out = df.resample("h").agg(STATS)
        out.columns = [f"{c}_{s}" for c, s in out.columns]
        out.to_csv(dst)
    elif engine.startswith("polars"):
        import polars as pl

        aggs = []
        for c in cols:
            col = pl.col(c)
            aggs += [
                col.count().alias(f"{c}_count"),
                col.mean().alias(f"{c}_mean"),
                col.std().alias(f"{c}_std"),
                col.min().alias(f"{c}_min"),
                col.max().alias(f"{c}_max"),
            ]
        lf = pl.scan_csv(src, try_parse_dates=True)
        if engine == "polars-dynamic":
            lf = lf.group_by_dynamic(time_col, every="1h").agg(aggs)
        elif engine == "polars-truncate":
            lf = (
                lf.group_by(pl.col(time_col).dt.truncate("1h"))
                .agg(aggs)
                .sort(time_col)
            )
        else:
            sys.exit(f"unknown engine {engine!r}")
        lf.sink_csv(dst)
    elif engine == "duckdb":
        import duckdb

        q = lambda c: '"' + c.replace('"', '""') + '"'
        sel = ", ".join(
            f"count({q(c)}) AS {q(c + '_count')}, avg({q(c)}) AS {q(c + '_mean')}, "
            f"stddev_samp({q(c)}) AS {q(c + '_std')}, min({q(c)}) AS {q(c + '_min')}, "
            f"max({q(c)}) AS {q(c + '_max')}"
            for c in cols
        )
        t = q(time_col)
        src_sql = src.replace("'", "''")
        dst_sql = dst.replace("'", "''")
        duckdb.sql(
            f"COPY (SELECT date_trunc('hour', {t}) AS {t}, {sel} "
            f"FROM read_csv('{src_sql}') GROUP BY 1 ORDER BY 1) TO '{dst_sql}' (HEADER)"
        )
    else:
        sys.exit(f"unknown engine {engine!r}")


def ensure_venv(venv):
    """The venv's python, creating the venv with the packages on first use."""
    py = Path(venv) / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return str(py)


def timed(cmd):
    """Runs `cmd` as a child; returns (wall s, user + sys s, peak RSS MiB, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, proc.returncode


def versions(py):
    out = subprocess.run(
        [py, "-c", "import pandas, polars, duckdb, sys; print('python', sys.version.split()[0],"
         " 'pandas', pandas.__version__, 'polars', polars.__version__, 'duckdb', duckdb.__version__)"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", help="run one engine once: ENGINE IN OUT")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rollq", default="target/release/rollq")
    ap.add_argument("--venv", default="bench-data/venv")
    ap.add_argument("--skip", action="append", default=[], help="pandas, polars or duckdb")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.engine:
        src, dst = a.files
        run_engine(a.engine, src, dst)
        return

    py = ensure_venv(a.venv)
    print(versions(py))
    me = os.path.abspath(__file__)
    help_text = subprocess.run([a.rollq, "aggregate", "--help"], capture_output=True, text=True).stdout
    threads = ["--threads", "1"] if "--threads" in help_text else []
    tools = {"rollq": lambda s, d: [a.rollq, "aggregate", s, "-o", d, *threads]}
    for engine in ["duckdb", "polars-dynamic", "polars-truncate", "pandas"]:
        if engine.split("-")[0] not in a.skip:
            tools[engine] = lambda s, d, e=engine: [py, me, "--engine", e, s, d]

    tmp = tempfile.mkdtemp(prefix="compare-")
    for src in a.files:
        size = os.path.getsize(src)
        print(f"\n{src}: {size / 1e6:.1f} MB; medians of {a.runs} runs after one warm-up")
        samples = {name: [] for name in tools}
        for round_ in range(a.runs + 1):
            for name, cmd in tools.items():
                out = os.path.join(tmp, name + ".csv")
                wall, cpu, rss, rc = timed(cmd(src, out))
                if rc != 0:
                    sys.exit(f"{name} failed with status {rc} on {src}")
                if round_ > 0:
                    samples[name].append((wall, cpu, rss))
                if round_ == 0:
                    lines = sum(1 for _ in open(out, "rb"))
                    print(f"  {name}: {lines} output lines")
        med = {n: tuple(statistics.median(s[i] for s in v) for i in range(3)) for n, v in samples.items()}
        polars = [n for n in med if n.startswith("polars")]
        if polars:
            best = min(polars, key=lambda n: med[n][0])
            print(f"  polars: {best} was faster (" + ", ".join(f"{n} {med[n][0]:.2f} s" for n in polars) + ")")
        r = med["rollq"]
        print(f"  {'tool':<16} {'wall s':>8} {'CPU s':>8} {'RSS MiB':>8} {'wall/rollq':>11} {'CPU/rollq':>10} {'RSS/rollq':>10} {'MB/s':>7}")
        for n, (w, c, m) in med.items():
            print(f"  {n:<16} {w:8.2f} {c:8.2f} {m:8.1f} {w / r[0]:11.2f} {c / r[1]:10.2f} {m / r[2]:10.1f} {size / 1e6 / w:7.0f}")
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
