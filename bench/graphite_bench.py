#!/usr/bin/env python3
"""graphite on loopback: opsbro beside carbon-cache and graphite-web (Debian graphite-carbon and
graphite-web 1.1.8), same machine, same run.

1. Ingestion: carbon plaintext lines over TCP (CONNS connections in parallel, each sending the
   same pre-built chunk of 100,000 lines over 100 series again and again). The rate is the
   lines the server counted divided by the time from the first byte to the last line counted;
   loss is 1 - counted / sent. opsbro counts in `agent info` (metrics.graphite_lines); carbon in
   its own metric carbon.agents.<host>-a.metricsReceived, written every second to a 1 s whisper
   archive (the time of its last non-zero point is when carbon had read the last line, whatever
   the lag of its writer).
2. /render: 10 series with a point per minute over the last day, written to both; then `wrk`
   (1 thread, 4 connections, keep-alive) asks each for
   sumSeries(movingAverage(bench.render.s*.value,'10min')) over the 1420 minutes before the data
   was written (a day less the window and a margin: a range reaching further back than a day is
   read from opsbro's hour archive, and past whisper's one 1-day archive is cut) as JSON for
   DURATION seconds.
   graphite-web runs under gunicorn with 2 sync workers (one per core), its render cache off
   (opsbro caches records, not answers); both answers are checked equal first, and opsbro is
   measured once its 10 s buffer has been written to its store (the steady state).

The /render part runs first, so that carbon's writer has nothing left to do meanwhile. Both
servers keep their default settings otherwise (carbon: MAX_UPDATES_PER_SECOND 500,
MAX_CACHE_SIZE inf; MAX_CREATES_PER_MINUTE is raised from 50 to inf, since past it carbon drops
the points of new series, which would leave the render series incomplete).

Usage: graphite_bench.py OPSBRO_BINARY [lines per server, default 4000000] [wrk seconds, default 10]
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

BIN = sys.argv[1]
LINES = int(sys.argv[2]) if len(sys.argv) > 2 else 4_000_000
DURATION = int(sys.argv[3]) if len(sys.argv) > 3 else 10
CONNS = 2
CHUNK_LINES = 100_000
WORK = tempfile.mkdtemp(prefix="opsbro-graphite-bench.")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, cond, timeout=60.0, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = cond()
        except OSError:
            v = None
        if v:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def start(args, env=None, log="log"):
    out = open(os.path.join(WORK, log), "w")
    p = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    PROCS.append(p)
    return p


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def tree_cpu(pid):
    """CPU seconds of a process and its children (gunicorn workers)."""
    total = cpu_seconds(pid)
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        kids = []
    return total + sum(cpu_seconds(int(k)) for k in kids)


# --- carbon-cache -------------------------------------------------------------------------------
carbon_dir = os.path.join(WORK, "carbon")
for d in ("whisper", "storage", "log"):
    os.makedirs(os.path.join(carbon_dir, d))
carbon_port = free_port()
with open(os.path.join(carbon_dir, "carbon.conf"), "w") as f:
    f.write(f"""[cache]
STORAGE_DIR = {carbon_dir}/storage
LOCAL_DATA_DIR = {carbon_dir}/whisper
WHITELISTS_DIR = {carbon_dir}/storage/lists
CONF_DIR = {carbon_dir}
LOG_DIR = {carbon_dir}/log
PID_DIR = {carbon_dir}
ENABLE_LOGROTATION = False
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 500
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {carbon_port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {free_port()}
ENABLE_TAGS = False
CARBON_METRIC_INTERVAL = 1
LOG_LISTENER_CONN_SUCCESS = False
LOG_UPDATES = False
LOG_CACHE_HITS = False
""")
with open(os.path.join(carbon_dir, "storage-schemas.conf"), "w") as f:
    f.write("[carbon]\npattern = ^carbon\\.\nretentions = 1s:1h\n\n[default]\npattern = .*\nretentions = 60s:1d\n")
carbon = start(["carbon-cache", f"--config={carbon_dir}/carbon.conf", "--debug", "start"], log="carbon.log")

# --- graphite-web under gunicorn ----------------------------------------------------------------
web_dir = os.path.join(WORK, "web")
os.makedirs(os.path.join(web_dir, "log"))
with open(os.path.join(web_dir, "bench_gw_settings.py"), "w") as f:
    f.write(f"""SECRET_KEY = 'bench'
TIME_ZONE = 'UTC'
STORAGE_DIR = '{web_dir}'
WHISPER_DIR = '{carbon_dir}/whisper'
STANDARD_DIRS = ['{carbon_dir}/whisper']
LOG_DIR = '{web_dir}/log'
INDEX_FILE = '{web_dir}/index'
CARBONLINK_HOSTS = []
DEFAULT_CACHE_DURATION = 0
LOG_RENDERING_PERFORMANCE = False
LOG_CACHE_PERFORMANCE = False
DATABASES = {{'default': {{'NAME': '{web_dir}/graphite.db', 'ENGINE': 'django.db.backends.sqlite3'}}}}
""")
web_port = free_port()
env = dict(os.environ, PYTHONPATH=web_dir, GRAPHITE_SETTINGS_MODULE="bench_gw_settings",
           DJANGO_SETTINGS_MODULE="graphite.settings")
web = start(["gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{web_port}", "--log-level", "warning",
             "django.core.wsgi:get_wsgi_application()"], env=env, log="gunicorn.log")

# --- opsbro -------------------------------------------------------------------------------------
ops_graphite = free_port()
ops_api = free_port()
with open(os.path.join(WORK, "agent.yml"), "w") as f:
    f.write(f"graphite:\n  enabled: true\n  port: {ops_graphite}\n  udp: false\ndns:\n  enabled: false\n")
ops = start([BIN, "agent", "start", "--config", os.path.join(WORK, "agent.yml"), "--data-dir",
             os.path.join(WORK, "data"), "--bind", "127.0.0.1", "--port", str(free_port()),
             "--api-port", str(ops_api), "--log-level", "warn"], log="opsbro.log")


def opsbro_lines():
    try:
        return json.loads(get(f"http://127.0.0.1:{ops_api}/agent/info"))["metrics"]["graphite_lines"]
    except (OSError, ValueError, KeyError):
        return None


def carbon_metric_file():
    host = socket.gethostname().replace(".", "_")
    return os.path.join(carbon_dir, "whisper", "carbon", "agents", f"{host}-a", "metricsReceived.wsp")


def carbon_received():
    """(total lines, time of the last second with lines) from carbon's own metric."""
    path = carbon_metric_file()
    if not os.path.exists(path):
        return (0, 0)
    out = subprocess.run(["whisper-fetch", "--from", str(int(time.time()) - 3500), path],
                         capture_output=True, text=True).stdout
    total, last = 0.0, 0
    for line in out.splitlines():
        ts, v = line.split()
        if v != "None" and float(v) > 0:
            total += float(v)
            last = int(ts)
    return (int(total), last)


def send_lines(port, chunk, repeats):
    def one(n):
        s = socket.create_connection(("127.0.0.1", port))
        for _ in range(n):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        s.close()
    per = [repeats // CONNS + (1 if i < repeats % CONNS else 0) for i in range(CONNS)]
    threads = [threading.Thread(target=one, args=(n,)) for n in per]
    for t in threads:
        t.start()
    return threads


results = {}
try:
    wait("opsbro", lambda: opsbro_lines() is not None)
    wait("graphite-web", lambda: get(f"http://127.0.0.1:{web_port}/render?target=constantLine(1)&format=json"))
    wait("carbon's own metrics", lambda: os.path.exists(carbon_metric_file()), timeout=120, every=1)

    # --- /render
    now = int(time.time())
    first = now - now % 60 - 1440 * 60
    lines = "".join(f"bench.render.s{s:02d}.value {((m * 7 + s * 13) % 97) / 3.0} {first + m * 60}\n"
                    for s in range(10) for m in range(1441)).encode()
    for port in (ops_graphite, carbon_port):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(lines)
    written_at = time.time()
    target = "sumSeries(movingAverage(bench.render.s*.value,'10min'))"
    # 23 h 40 min, so that the 10 minutes movingAverage reads before it are still in both stores'
    # minute archive (kept a day) while the benchmark runs.
    # Absolute times, so that both answer the same window whenever asked.
    span = {"from": str(now - 1420 * 60), "until": str(now)}
    query = "/render?" + urllib.parse.urlencode(dict(span, target=target, format="json"))
    raw = "/render?" + urllib.parse.urlencode(dict(span, target="bench.render.s*.value", format="json"))

    def ready(port):
        def check():
            try:
                series = json.loads(get(f"http://127.0.0.1:{port}{raw}"))
            except ValueError:
                return False
            # Every point of every series is there (carbon writes in the background).
            full = len(series) == 10 and all(
                len(s["datapoints"]) >= 1420 and all(v is not None for v, _ in s["datapoints"])
                for s in series)
            return full and json.loads(get(f"http://127.0.0.1:{port}{query}"))
        return check
    ours = wait("opsbro holding the render series", ready(ops_api), timeout=120, every=0.5)
    theirs = wait("graphite-web holding the render series", ready(web_port), timeout=300, every=1)
    def rounded(answer):
        return [(None if v is None else round(v, 6), t) for v, t in answer[0]["datapoints"]]
    same = ours[0]["target"] == theirs[0]["target"] and rounded(ours) == rounded(theirs)
    if not same:
        print("opsbro      ", ours[0]["target"], rounded(ours)[:5], rounded(ours)[-5:])
        print("graphite-web", theirs[0]["target"], rounded(theirs)[:5], rounded(theirs)[-5:])
    print(f"/render {target} over 1420 min: {len(ours[0]['datapoints'])} points, "
          f"answers {'identical' if same else 'DIFFERENT'}")
    # opsbro folds its in-memory buffer into the store every 10 s: measure the steady state,
    # where a day of points is read from the store (through its read cache), not the buffer.
    time.sleep(max(0.0, written_at + 12 - time.time()))
    for name, port, pid in (("opsbro", ops_api, ops.pid), ("graphite-web", web_port, web.pid)):
        cpu0 = tree_cpu(pid)
        t0 = time.time()
        out = subprocess.run(["wrk", "-t1", "-c4", f"-d{DURATION}s", "--latency",
                              f"http://127.0.0.1:{port}{query}"], capture_output=True, text=True).stdout
        cpu = (tree_cpu(pid) - cpu0) / (time.time() - t0)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
        p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        results[f"render-{name}"] = rps
        print(f"  {name:13} {rps:10,.1f} requests/s  (p50 {p50}, p99 {p99}, {cpu * 100:.0f}% CPU"
              f"{', ' + errors.group(1) + ' errors' if errors else ''})")
    print(f"  ratio {results['render-opsbro'] / results['render-graphite-web']:.1f}x")
    # --- ingestion
    now = int(time.time())
    chunk = "".join(f"bench.ingest.m{i % 100:03d} {i % 1000} {now - 3600 + (i // 100) % 3600}\n"
                    for i in range(CHUNK_LINES)).encode()
    repeats = max(1, LINES // CHUNK_LINES)
    sent = repeats * CHUNK_LINES

    before = opsbro_lines()
    cpu0 = cpu_seconds(ops.pid)
    t0 = time.time()
    threads = send_lines(ops_graphite, chunk, repeats)
    done = wait("opsbro counting the lines", lambda: (opsbro_lines() - before >= sent) and time.time(),
                timeout=600, every=0.02)
    for t in threads:
        t.join()
    got = opsbro_lines() - before
    results["opsbro"] = (got, done - t0, (cpu_seconds(ops.pid) - cpu0) / (done - t0))

    base_total, _ = carbon_received()
    cpu0 = cpu_seconds(carbon.pid)
    t0 = time.time()
    threads = send_lines(carbon_port, chunk, repeats)
    for t in threads:
        t.join()
    sent_at = time.time()
    cpu_send = cpu_seconds(carbon.pid) - cpu0

    def carbon_done():
        total, last = carbon_received()
        # carbon writes its own metric through its cache: it may show up well after the lines.
        return (total - base_total >= sent or (time.time() - sent_at > 300)) and (total, last)
    total, last = wait("carbon counting the lines", carbon_done, timeout=900, every=2)
    elapsed = max(1.0, last + 1 - t0)
    results["carbon-cache"] = (total - base_total, elapsed, cpu_send / max(1e-9, sent_at - t0))

    print(f"ingestion: {sent:,} lines over {CONNS} TCP connections")
    for name, (got, secs, cpu) in ((k, v) for k, v in results.items() if not k.startswith("render-")):
        loss = 100.0 * (1 - got / sent)
        print(f"  {name:13} {got / secs:12,.0f} lines/s  ({got:,} counted in {secs:.2f} s, "
              f"loss {loss:.3f}%, {cpu * 100:.0f}% CPU)")
    ratio = (results["opsbro"][0] / results["opsbro"][1]) / (results["carbon-cache"][0] / results["carbon-cache"][1])
    print(f"  ratio {ratio:.1f}x")

finally:
    for p in PROCS:
        p.terminate()
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(WORK, ignore_errors=True)
