#!/usr/bin/env python3
"""The same hourly roll-up with pandas, polars or DuckDB, for docs/BENCHMARKS.md.

Usage: /usr/bin/time -v python3 benches/compare.py pandas|polars|duckdb INPUT OUTPUT
(pip install pandas polars duckdb). Reads `Datetime,Temperature`, writes per-hour count,
mean, std, min, max like `rollq aggregate` (polars and DuckDB omit empty hours).
"""
import sys

engine, src, dst = sys.argv[1:4]

if engine == "pandas":
    import pandas as pd

    df = pd.read_csv(src, parse_dates=["Datetime"], index_col="Datetime")
    out = df.resample("h").agg(["count", "mean", "std", "min", "max"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    out.to_csv(dst)
elif engine == "polars":
    import polars as pl

    (
        pl.scan_csv(src, try_parse_dates=True)
        .group_by_dynamic("Datetime", every="1h")
        .agg(
            pl.col("Temperature").count().alias("Temperature_count"),
            pl.col("Temperature").mean().alias("Temperature_mean"),
            pl.col("Temperature").std().alias("Temperature_std"),
            pl.col("Temperature").min().alias("Temperature_min"),
            pl.col("Temperature").max().alias("Temperature_max"),
        )
        .sink_csv(dst)
    )
elif engine == "duckdb":
    import duckdb

    duckdb.sql(
        f"""COPY (SELECT date_trunc('hour', Datetime) AS Datetime,
                   count(Temperature) AS Temperature_count, avg(Temperature) AS Temperature_mean,
                   stddev_samp(Temperature) AS Temperature_std, min(Temperature) AS Temperature_min,
                   max(Temperature) AS Temperature_max
            FROM read_csv('{src}') GROUP BY 1 ORDER BY 1) TO '{dst}' (HEADER)"""
    )
else:
    sys.exit(f"unknown engine {engine!r}")
