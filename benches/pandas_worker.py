#!/usr/bin/env python3
"""The original job's full round trip, for the end-to-end bench (benches/e2e.py).

One message at a time, as the original worker ran: receive one message, download the blob it
names, resample to hourly count/mean/std/min/max with pandas, upload `<stem>_aggregated.csv`
beside the input (overwrite), delete the message. Stops when a receive comes back empty.

Usage: python benches/pandas_worker.py --queue Q --container C
with AZURE_STORAGE_CONNECTION_STRING set; install benches/requirements-pandas-worker.txt in a
venv (e2e.py does). Against Azurite, start it with --skipApiVersionCheck: the current Python
SDKs send a newer x-ms-version than Azurite 3.37 accepts.

Prints one line of JSON like examples/bare_client.rs: files, drain seconds (start of the first
receive to the end of the last delete), files/s, input bytes, p50/p95 message age (insertion
to delete) in seconds. `--deletes FILE` also writes `<message id> <unix seconds of its delete>`
per message, so the bench measures every consumer's message age from the same clock.
"""

import argparse
import io
import json
import math
import os
import time
from datetime import datetime, timezone

import pandas as pd
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient


def output_name(name):
    """rollq's rule (src/contract.rs): `x.csv` -> `x_aggregated.csv`, else `x_aggregated_aggregated.csv`."""
    if name.endswith(".csv"):
        return name[: -len(".csv")] + "_aggregated.csv"
    return name + "_aggregated_aggregated.csv"


def rollup(data, name):
    """The original job: pandas read_csv, hourly resample, five statistics per column."""
    compression = "gzip" if name.endswith(".gz") else None
    df = pd.read_csv(
        io.BytesIO(data),
        parse_dates=["Datetime"],
        index_col="Datetime",
        compression=compression,
    )
    out = df.resample("h").agg(["count", "mean", "std", "min", "max"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    return out.to_csv().encode()


def quantile(sorted_values, q):
    """Nearest-rank quantile, the rule bare_client uses (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(max(math.ceil(q * len(sorted_values)), 1), len(sorted_values))
    return sorted_values[rank - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", required=True)
    ap.add_argument("--container", required=True)
    ap.add_argument("--visibility-secs", type=int, default=300)
    ap.add_argument("--deletes", help="write '<message id> <unix time>' per delete here")
    args = ap.parse_args()
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    queue = QueueClient.from_connection_string(conn, args.queue)
    container = BlobServiceClient.from_connection_string(conn).get_container_client(
        args.container
    )

    started = time.monotonic()
    last_delete = started
    files = nbytes = 0
    ages = []
    deletes = []
    while True:
        msg = queue.receive_message(visibility_timeout=args.visibility_secs)
        if msg is None:
            break
        name = msg.content
        data = container.download_blob(name).readall()
        container.upload_blob(output_name(name), rollup(data, name), overwrite=True)
        queue.delete_message(msg)
        last_delete = time.monotonic()
        deletes.append(f"{msg.id} {time.time():.6f}\n")
        files += 1
        nbytes += len(data)
        if msg.inserted_on is not None:
            ages.append((datetime.now(timezone.utc) - msg.inserted_on).total_seconds())
    if args.deletes:
        with open(args.deletes, "w") as f:
            f.writelines(deletes)
    secs = last_delete - started
    ages.sort()
    print(
        json.dumps(
            {
                "files": files,
                "seconds": round(secs, 4),
                "files_per_s": round(files / secs, 2) if secs > 0 else 0.0,
                "bytes": nbytes,
                "age_p50": round(quantile(ages, 0.50), 4),
                "age_p95": round(quantile(ages, 0.95), 4),
                "concurrency": 1,
                "mode": "pandas",
            }
        )
    )


if __name__ == "__main__":
    main()
