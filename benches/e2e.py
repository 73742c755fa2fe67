#!/usr/bin/env python3
"""End-to-end bench: rollq worker against Azurite, next to a bare client and the pandas job.

Run on demand (not in CI) from the repository root:

    python3 benches/e2e.py            # every scenario, 5 paired runs each (long)
    python3 benches/e2e.py --quick    # 1 run each: a smoke test
    python3 benches/e2e.py --scenarios day200 --runs 5 --worker-args "--max-in-flight 16"

It builds `target/release/rollq` and the `bare_client` / `gen_seed` examples (`--no-build` to
skip), creates a venv under target/ for the pandas worker (benches/requirements-pandas-worker.txt),
and prints a markdown table for docs/BENCHMARKS.md (`--json FILE` keeps every run).

Every run gets a fresh Azurite (`node node_modules/azurite/...`, in memory, or on disk under a
temporary directory for the 1 GiB blob; `--skipApiVersionCheck` because the Python SDKs send a
newer API version than Azurite 3.37 accepts; random ports). The inputs are uploaded with
`rollq submit` (to a staging queue that nobody reads) and then the N messages are sent to the
measured queue with `rollq queue send`, whose per-message output gives each message's send time.
Only then does the consumer start.

What each column means:
- files/s: files / drain time. Drain time runs from the first receive to the last delete. For
  rollq it comes from the worker's JSON log: the earliest `message completed` timestamp minus its
  `seconds`, to the latest `message completed` timestamp, over every worker process. The idle
  tail before `--exit-when-idle` fires is therefore left out. The bare client and the pandas
  worker time themselves the same way.
- vs ceiling: the median over rounds of (rate / best bare-client rate of the same round, over
  concurrency 4, 8 and 16). Rollq and the bare client alternate within a round, so load from
  other work on the machine hits both alike.
- req/file: storage requests Azurite logged (`--debug` log, one `Operation=` line per request)
  from the first Get Messages to the last Delete Message, divided by files: the start-up
  check before and the idle receives after are left out, queue sampling in between is in. Measured in one extra run per
  consumer with the debug log on (the log slows Azurite, so those runs are not timed).
- age p50/p95: per message, its delete (rollq: the `message completed` log line, written right
  after the delete) minus its send, over all runs of the row.
- peak RSS: the largest "Maximum resident set size" `/usr/bin/time -v` reports for a consumer
  process (per process, not summed).
- Azurite CPU ms/file: the emulator's user + system CPU time during the run, per file.
- consumer CPU ms/file: the consumer's own user + system CPU time (`/usr/bin/time -v`, summed
  over its processes, start-up and idle tail included), per file. On 2 cores the emulator takes
  more than one of them, so what a consumer burns itself is taken from the emulator's share.
"""

import argparse
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Azurite's well-known development account key (public, documented by Microsoft).
DEV_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DAY_ROWS = 1_440
YEAR_ROWS = 525_600
GIB = 1 << 30
BARE_CONCURRENCY = (4, 8, 16)


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def unix_of(ts):
    """RFC 3339 (`2026-12-01T15:53:14.459351Z`) → unix seconds."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def clock_ticks():
    return os.sysconf("SC_CLK_TCK")


# === Azurite ===


class Azurite:
    """One emulator process, killed by its own handle on `stop()`."""

    def __init__(self, workdir, debug=False, on_disk=False):
        self.workdir = Path(tempfile.mkdtemp(prefix="azurite-", dir=workdir))
        self.debug_log = self.workdir / "debug.log" if debug else None
        cmd = [
            "node",
            str(ROOT / "node_modules/azurite/dist/src/azurite.js"),
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--blobHost", "127.0.0.1", "--blobPort", "0",
            "--queueHost", "127.0.0.1", "--queuePort", "0",
            "--tableHost", "127.0.0.1", "--tablePort", "0",
        ]  # fmt: skip
        cmd += ["--location", str(self.workdir)] if on_disk else ["--inMemoryPersistence"]
        if self.debug_log:
            cmd += ["--debug", str(self.debug_log)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ports = {}
        deadline = time.monotonic() + 60
        while len(ports) < 3:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Azurite did not start (last line {line!r})")
            m = re.search(r"Azurite (\w+) service is successfully listening at http://[\d.]+:(\d+)", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
        # Keep reading stdout so the emulator never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.conn = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{ports['Blob']}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{ports['Queue']}/devstoreaccount1;"
        )

    def env(self):
        return dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=self.conn)

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / clock_ticks()

    def log_offset(self):
        return self.debug_log.stat().st_size if self.debug_log and self.debug_log.exists() else 0

    def wait_log_settled(self, quiet=1.0, limit=30.0):
        """Azurite writes its debug log asynchronously: wait until it stops growing."""
        size, since, deadline = -1, time.monotonic(), time.monotonic() + limit
        while time.monotonic() < deadline:
            now = self.log_offset()
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)

    def drain_requests(self, offset):
        """Requests Azurite logged after byte `offset`, from the first Get Messages to the last
        Delete Message in the log's order (the order Azurite dispatched them). The log's
        timestamps are not used: under load they lag the requests by seconds."""
        if not self.debug_log:
            return None
        seq = []
        with open(self.debug_log, "rb") as f:
            f.seek(offset)
            for raw in f:
                m = re.search(rb" info: DispatchMiddleware: Operation=(\w+)", raw)
                if m:
                    seq.append(m.group(1).decode())
        if "Messages_Dequeue" not in seq or "MessageId_Delete" not in seq:
            return {}
        first = seq.index("Messages_Dequeue")
        last = len(seq) - 1 - seq[::-1].index("MessageId_Delete")
        ops = {}
        for op in seq[first : last + 1]:
            ops[op] = ops.get(op, 0) + 1
        return ops

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


# === inputs ===


class Inputs:
    """Template input files, generated once per bench run with gen_seed."""

    def __init__(self, bins, datadir):
        self.bins, self.datadir, self.cache = bins, datadir, {}

    def template(self, kind):
        if kind in self.cache:
            return self.cache[kind]
        if kind == "day":
            path = self._gen("day.csv", DAY_ROWS)
        elif kind == "year":
            path = self._gen("year.csv", YEAR_ROWS)
        elif kind == "year-gz":
            src = self.template("year")
            path = self.datadir / "year.csv.gz"
            with open(src, "rb") as i, gzip.open(path, "wb", compresslevel=6) as o:
                shutil.copyfileobj(i, o)
        elif kind == "gib":
            day = self.template("day")
            per_row = (day.stat().st_size - len("Datetime,Temperature\n")) / DAY_ROWS
            path = self._gen("gib.csv", int(GIB / per_row) + 1)
        else:
            raise ValueError(kind)
        self.cache[kind] = path
        return path

    def _gen(self, name, rows):
        path = self.datadir / name
        run([str(self.bins["gen_seed"]), str(path), str(rows)])
        return path

    def drop(self, kind):
        path = self.cache.pop(kind, None)
        if path:
            path.unlink(missing_ok=True)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def stage(az, bins, inputs, kind, n, workdir, enqueue=True):
    """Uploads n copies of the template and (unless `enqueue` is false) sends n messages to a
    new queue; returns what a run needs."""
    tpl = inputs.template(kind)
    suffix = ".csv.gz" if tpl.name.endswith(".gz") else ".csv"
    folder = Path(tempfile.mkdtemp(prefix="in-", dir=workdir))
    names = []
    for i in range(n):
        name = f"{kind}-{i:05d}{suffix}"
        os.link(tpl, folder / name)  # hard links: n names, one file on disk
        names.append(name)
    tag = uuid.uuid4().hex[:10]
    container, queue = f"in-{tag}", f"q-{tag}"
    run(
        [str(bins["rollq"]), "submit", str(folder), "--container", container,
         "--queue", f"staging-{tag}", "--parallel", "8"],
        env=az.env(),
    )  # fmt: skip
    shutil.rmtree(folder)
    run([str(bins["rollq"]), "queue", "create", "--queue", queue], env=az.env())
    sent = send(az, bins, queue, names) if enqueue else {}
    return {
        "container": container,
        "queue": queue,
        "sent": sent,
        "bytes": tpl.stat().st_size * n,
        "files": n,
    }


def send(az, bins, queue, names):
    """`rollq queue send` the names; each printed id is timestamped as it arrives."""
    p = subprocess.Popen(
        [str(bins["rollq"]), "queue", "send", "--queue", queue, "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=az.env(),
    )  # fmt: skip
    threading.Thread(target=lambda: (p.stdin.write("\n".join(names) + "\n"), p.stdin.close()), daemon=True).start()
    sent = {}
    for line in p.stdout:
        sent[line.strip()] = time.time()
    if p.wait() != 0 or len(sent) != len(names):
        raise RuntimeError(f"queue send: {len(sent)} of {len(names)} sent")
    return sent


# === consumers ===


def max_rss_kib(stderr_text):
    m = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", stderr_text)
    return max(map(int, m)) if m else None


def cpu_seconds_of(stderr_text):
    """User + system CPU seconds `/usr/bin/time -v` reports for one consumer process."""
    user = re.findall(r"User time \(seconds\): ([\d.]+)", stderr_text)
    system = re.findall(r"System time \(seconds\): ([\d.]+)", stderr_text)
    return float(user[-1]) + float(system[-1]) if user and system else None


def run_rollq(az, bins, st, procs, worker_args, idle="2s"):
    cmd = [
        "/usr/bin/time", "-v", str(bins["rollq"]), "worker",
        "--queue", st["queue"], "--container", st["container"],
        "--exit-when-idle", idle, "--http-addr", "127.0.0.1:0", "--log-format", "json",
    ] + worker_args  # fmt: skip
    # Each worker's log goes to a file of its own, not a pipe: pipes read one process at a
    # time (`communicate` in turn) let the others' pipe buffers fill, and a worker whose log
    # write blocks stalls its runtime (seen: a second worker frozen for a whole visibility
    # timeout, until the first one exited).
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(procs)]
    ps = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=az.env())
        for log in logs
    ]
    try:
        for p in ps:
            p.wait(timeout=3600)
        outs = []
        for log in logs:
            log.seek(0)
            outs.append(log.read())
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    done, starts, failures = {}, [], 0
    for p, err in zip(ps, outs):
        if p.returncode != 0:
            raise RuntimeError(f"rollq worker exited {p.returncode}:\n{err[-3000:]}")
        for line in err.splitlines():
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            if ev.get("message") != "message completed":
                if ev.get("level") in ("WARN", "ERROR"):
                    failures += 1
                continue
            t = unix_of(ev["timestamp"])
            done[ev["span"]["message_id"]] = t
            starts.append(t - float(ev["seconds"]))
    if len(done) != st["files"]:
        raise RuntimeError(f"rollq completed {len(done)} of {st['files']} messages")
    return {
        "files": len(done),
        "t0": min(starts),
        "t1": max(done.values()),
        "deletes": done,
        "rss_kib": max(max_rss_kib(e) or 0 for e in outs),
        "cpu_s": sum(cpu_seconds_of(e) or 0 for e in outs),
        "warnings": failures,
    }


def run_listed(az, cmd, st, workdir):
    """bare_client or pandas_worker: both print a JSON summary and write --deletes."""
    deletes = Path(tempfile.mktemp(prefix="deletes-", dir=workdir))
    full = ["/usr/bin/time", "-v"] + cmd + ["--queue", st["queue"], "--container", st["container"], "--deletes", str(deletes)]
    r = subprocess.run(full, capture_output=True, text=True, env=az.env(), timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(full)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    done = {}
    for line in deletes.read_text().splitlines():
        mid, t = line.split()
        done[mid] = float(t)
    deletes.unlink()
    if len(done) != st["files"]:
        raise RuntimeError(f"{cmd[0]} completed {len(done)} of {st['files']} messages")
    t1 = max(done.values())
    return {
        "files": len(done),
        "t0": t1 - summary["seconds"],
        "t1": t1,
        "deletes": done,
        "rss_kib": max_rss_kib(r.stderr),
        "cpu_s": cpu_seconds_of(r.stderr),
        "warnings": 0,
    }


def consumer_cmd(bins, venv, consumer, worker_args):
    """(runner, label) for one consumer spec: ('rollq', k), ('bare', c, mode), ('pandas',)."""
    if consumer[0] == "rollq":
        k = consumer[1]
        return (lambda az, st, wd: run_rollq(az, bins, st, k, worker_args)), f"rollq worker ×{k}"
    if consumer[0] == "bare":
        _, c, mode = consumer
        cmd = [str(bins["bare_client"]), "--concurrency", str(c), "--mode", mode]
        return (lambda az, st, wd: run_listed(az, cmd, st, wd)), f"bare client c={c} ({mode})"
    cmd = [str(venv / "bin/python"), str(ROOT / "benches/pandas_worker.py")]
    return (lambda az, st, wd: run_listed(az, cmd, st, wd)), "pandas worker"


def one_run(bins, inputs, workdir, kind, n, runner, count_requests, on_disk):
    az = Azurite(workdir, debug=count_requests, on_disk=on_disk)
    try:
        st = stage(az, bins, inputs, kind, n, workdir)
        offset = az.log_offset()
        cpu0 = az.cpu_seconds()
        res = runner(az, st, workdir)
        res["azurite_cpu_s"] = az.cpu_seconds() - cpu0
        res["bytes"] = st["bytes"]
        res["seconds"] = res["t1"] - res["t0"]
        res["ages"] = [res["deletes"][m] - st["sent"][m] for m in res["deletes"]]
        if count_requests:
            az.wait_log_settled()
            res["ops"] = az.drain_requests(offset)
        del res["deletes"]
        return res
    finally:
        az.stop()


# === scenarios ===

DAY_CONSUMERS = [("rollq", 1), ("rollq", 2), ("rollq", 4)] + [("bare", c, "full") for c in BARE_CONCURRENCY]
YEAR_CONSUMERS = [("rollq", 1)] + [("bare", c, "download") for c in BARE_CONCURRENCY]
SCENARIOS = {
    # name: (input kind, files, consumers, consumers whose requests are counted, on disk)
    "day200": ("day", 200, DAY_CONSUMERS + [("pandas",)], {("rollq", 1), ("bare", 8, "full")}, False),
    "day1000": ("day", 1000, DAY_CONSUMERS, {("rollq", 1), ("bare", 8, "full")}, False),
    "year6": ("year", 6, YEAR_CONSUMERS, {("rollq", 1)}, False),
    "year24": ("year", 24, YEAR_CONSUMERS, {("rollq", 1)}, False),
    "gz6": ("year-gz", 6, YEAR_CONSUMERS, set(), False),
    "gib": ("gib", 1, [("rollq", 1)], set(), True),
}


def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(max(int(-(-q * len(s) // 1)), 1), len(s)) - 1]


def run_scenario(name, args, bins, inputs, workdir, venv):
    kind, n, consumers, counted, on_disk = SCENARIOS[name]
    runs = 1 if name == "gib" and not args.big_runs_like_others else args.runs
    specs = [(c, *consumer_cmd(bins, venv, c, args.worker_args)) for c in consumers]
    rows = {c: {"label": label, "runs": [], "ops": None} for c, _, label in specs}
    for c, runner, label in specs:
        if c in counted:
            log(f"{name}: {label}, counting requests")
            rows[c]["ops"] = one_run(bins, inputs, workdir, kind, n, runner, True, on_disk)
    for i in range(runs):
        for c, runner, label in specs:
            log(f"{name}: round {i + 1}/{runs}, {label}")
            rows[c]["runs"].append(one_run(bins, inputs, workdir, kind, n, runner, False, on_disk))
    if name == "gib":
        inputs.drop("gib")
    # Paired ratio per round: rollq's rate over the best bare rate of the same round.
    bare = [c for c in consumers if c[0] == "bare"]
    out = []
    for c in consumers:
        r = rows[c]
        rates = [x["files"] / x["seconds"] for x in r["runs"]]
        ratio = None
        if bare:
            ratio = statistics.median(
                (x["files"] / x["seconds"]) / max(rows[b]["runs"][i]["files"] / rows[b]["runs"][i]["seconds"] for b in bare)
                for i, x in enumerate(r["runs"])
            )
        ages = [a for x in r["runs"] for a in x["ages"]]
        ops = r["ops"]["ops"] if r["ops"] else None
        out.append({
            "scenario": name,
            "consumer": r["label"],
            "files": n,
            "runs": len(r["runs"]),
            "files_per_s": statistics.median(rates),
            "files_per_s_all": rates,
            "vs_ceiling": ratio,
            "mb_per_s": statistics.median(x["bytes"] / x["seconds"] / 1e6 for x in r["runs"]),
            "req_per_file": sum(ops.values()) / n if ops else None,
            "ops": ops,
            "age_p50": pct(ages, 0.50),
            "age_p95": pct(ages, 0.95),
            "rss_mib": max((x["rss_kib"] or 0) for x in r["runs"]) / 1024,
            "azurite_cpu_ms_per_file": statistics.median(x["azurite_cpu_s"] * 1000 / x["files"] for x in r["runs"]),
            "consumer_cpu_ms_per_file": statistics.median(
                (x["cpu_s"] or 0) * 1000 / x["files"] for x in r["runs"]
            ),
            "warnings": sum(x["warnings"] for x in r["runs"]),
        })  # fmt: skip
    return out


def idle_to_first_output(args, bins, inputs, workdir):
    """A worker idle long enough for its poll backoff to reach the maximum, then one message."""
    az = Azurite(workdir)
    lat = []
    try:
        st = stage(az, bins, inputs, "day", args.runs, workdir, enqueue=False)
        queue = st["queue"]
        cmd = [
            str(bins["rollq"]), "worker", "--queue", queue, "--container", st["container"],
            "--exit-when-idle", "10m", "--http-addr", "127.0.0.1:0", "--log-format", "json",
        ] + args.worker_args  # fmt: skip
        w = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=az.env())
        events = []
        threading.Thread(target=lambda: events.extend(w.stderr), daemon=True).start()
        try:
            for i in range(args.runs):
                time.sleep(args.idle_secs)  # waiting for the worker to back off is the point
                sent = send(az, bins, queue, [f"day-{i:05d}.csv"])
                (mid, t_sent), = sent.items()
                deadline = time.monotonic() + 120
                t_done = None
                while t_done is None and time.monotonic() < deadline:
                    for line in list(events):
                        if mid in line and '"message completed"' in line:
                            t_done = unix_of(json.loads(line)["timestamp"])
                    time.sleep(0.02)
                if t_done is None:
                    raise RuntimeError("the idle worker did not complete the message in 120 s")
                lat.append(t_done - t_sent)
        finally:
            w.terminate()
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    finally:
        az.stop()
    return lat


# === output ===


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def markdown(rows, latencies, args):
    lines = [
        "| scenario | consumer | files | runs | files/s (median) | vs bare ceiling | input MB/s | req/file | age p50 / p95 s | peak RSS MiB | Azurite CPU ms/file | consumer CPU ms/file |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['consumer']} | {r['files']} | {r['runs']} | {fmt(r['files_per_s'], '.1f')} "
            f"| {fmt(r['vs_ceiling'] and 100 * r['vs_ceiling'], '.0f')}{'' if r['vs_ceiling'] is None else ' %'} "
            f"| {fmt(r['mb_per_s'], '.1f')} | {fmt(r['req_per_file'], '.2f')} "
            f"| {fmt(r['age_p50'], '.2f')} / {fmt(r['age_p95'], '.2f')} | {fmt(r['rss_mib'], '.0f')} "
            f"| {fmt(r['azurite_cpu_ms_per_file'], '.1f')} | {fmt(r['consumer_cpu_ms_per_file'], '.1f')} |"
        )
    if latencies is not None:
        lines.append("")
        lines.append(
            f"Idle worker to first output ({len(latencies)} messages, each after {args.idle_secs:g} s idle): "
            f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s."
        )
    ops = [r for r in rows if r["ops"]]
    if ops:
        lines.append("")
        lines.append("Requests in the drain window, by Azurite operation (one counted run each):")
        lines.append("")
        for r in ops:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items()))
            lines.append(f"- {r['scenario']}, {r['consumer']}: {detail}")
    return "\n".join(lines)


def build(args):
    release = args.profile == "release"
    if not args.no_build:
        log(f"cargo build ({args.profile}: rollq, bare_client, gen_seed)")
        subprocess.run(
            ["cargo", "build", "--bin", "rollq", "--example", "bare_client", "--example", "gen_seed"]
            + (["--release"] if release else []),
            cwd=ROOT, check=True,
        )  # fmt: skip
    rel = ROOT / ("target/release" if release else "target/debug")
    return {"rollq": rel / "rollq", "bare_client": rel / "examples/bare_client", "gen_seed": rel / "examples/gen_seed"}


def pandas_venv(args):
    venv = ROOT / "target/e2e-venv"
    req = ROOT / "benches/requirements-pandas-worker.txt"
    stamp = venv / ".requirements"
    if not stamp.exists() or stamp.read_text() != req.read_text():
        log(f"creating {venv} from {req.name}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-r", str(req)], check=True)
        stamp.write_text(req.read_text())
    return venv


def main():
    ap = argparse.ArgumentParser(description="rollq end-to-end bench against Azurite")
    ap.add_argument("--quick", action="store_true", help="1 run per figure (smoke test)")
    ap.add_argument("--runs", type=int, default=5, help="paired runs per figure (default 5)")
    ap.add_argument("--scenarios", default=",".join(list(SCENARIOS) + ["idle"]),
                    help=f"comma-separated subset of {', '.join(SCENARIOS)}, idle")  # fmt: skip
    ap.add_argument("--worker-args", default="", help="extra `rollq worker` flags, passed through")
    ap.add_argument("--idle-secs", type=float, default=8.0, help="idle time before each message (idle scenario)")
    ap.add_argument("--big-runs-like-others", action="store_true", help="run the 1 GiB blob --runs times, not once")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--profile", choices=["release", "debug"], default="release",
                    help="debug only to smoke-test this script: its figures mean nothing")  # fmt: skip
    ap.add_argument("--json", help="write every row (with per-run rates) here")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    args.worker_args = shlex.split(args.worker_args)
    wanted = [s for s in args.scenarios.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS) - {"idle"}
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    bins = build(args)
    venv = pandas_venv(args) if any(("pandas",) in SCENARIOS[s][2] for s in wanted if s in SCENARIOS) else None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="rollq-e2e-") as workdir:
        workdir = Path(workdir)
        inputs = Inputs(bins, workdir)
        rows = []
        for s in wanted:
            if s in SCENARIOS:
                rows += run_scenario(s, args, bins, inputs, workdir, venv)
        latencies = idle_to_first_output(args, bins, inputs, workdir) if "idle" in wanted else None
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "idle_latencies": latencies}, indent=1))
    cmd = shlex.join(["python3", "benches/e2e.py"] + sys.argv[1:])
    print(f"`{cmd}`, {args.profile} build, {started}, {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}\n")
    print(markdown(rows, latencies, args))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
