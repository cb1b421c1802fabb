#!/usr/bin/env python3
"""Time to a rendered cluster overview of 1000 members in headless Chromium (issue 30).

No agent can be made to report 1000 members honestly on one machine without running 1000
agents, and a test-only way to fake the members list would be a backdoor in the product. So:
a real agent is started only to take the UI it serves (the page and its files, byte for byte,
with their headers), and a small static server here serves those files beside a synthetic
`/agent/members` answer of 1000 members (5 zones, groups, 4-6 checks each, some suspect or
dead), in the exact JSON shape the agent answers. The page does not know the difference.

Measured with the Performance API: navigation start to the `overview-rendered` mark the page
sets after its first full render of the member rows. 10 navigations, median (the first one
cold, the next ones with the immutable assets in the browser's cache, as for a returning user).

    python3 bench/ui_overview.py [target/release/opsbro]
"""

import http.server
import json
import os
import random
import re
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/opsbro"
MEMBERS = 1000
RUNS = 10
TARGET_MS = 300


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_agent(work):
    env = dict(os.environ, OPSBRO_HOSTING_DRIVER="none")
    open(f"{work}/agent.yml", "w").close()
    proc = subprocess.Popen(
        [BIN, "agent", "start", "--config", f"{work}/agent.yml", "--data-dir", f"{work}/data",
         "--api-port", "0", "--port", "0", "--dns-port", "0", "--bind", "127.0.0.1",
         "--node-name", "bench-ui", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(200):
        try:
            rt = json.load(open(f"{work}/data/agent.runtime.json"))
            if rt["pid"] == proc.pid:
                return proc, rt["api_addr"]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise SystemExit("the agent did not start")


def fetch(url):
    with urllib.request.urlopen(url) as r:
        return r.read(), dict(r.headers)


def take_ui(api):
    """The page and every file it names, with the agent's headers."""
    files = {}
    page, headers = fetch(f"http://{api}/ui/")
    files["/ui/"] = (page, headers)
    for rel in set(re.findall(rb'(?:src|href)="(v/[0-9a-f]+/[^"]+)"', page)):
        rel = rel.decode()
        files[f"/ui/{rel}"] = fetch(f"http://{api}/ui/{rel}")
    # Modules the page's modules import (relative to the same folder).
    version_dir = next(k for k in files if k.endswith("/app.js")).rsplit("/", 1)[0]
    for name in ("api.js", "pages.js", "dom.js"):
        files[f"{version_dir}/{name}"] = fetch(f"http://{api}{version_dir}/{name}")
    return files


def synthetic_members():
    rng = random.Random(30)
    zones = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"]
    roles = ["web", "db", "cache", "queue", "search", "api", "batch"]
    states = ["ok"] * 20 + ["warning", "critical", "unknown"]
    out = []
    for i in range(MEMBERS):
        zone = zones[i % len(zones)]
        state = "alive" if i % 97 else rng.choice(["suspect", "dead", "left"])
        checks = [{"name": f"linux/{c}", "state": rng.choice(states)}
                  for c in ["cpu", "memory", "disks", "load-average", "ntp", "swap"][: rng.randint(4, 6)]]
        out.append({
            "uuid": f"{i:08x}-0000-4000-8000-{i:012x}",
            "name": f"{rng.choice(roles)}-{zone}-{i:04d}",
            "display_name": f"node {i}",
            "addr": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:6768",
            "zone": zone,
            "groups": sorted({rng.choice(roles), "linux", "debian", f"zone::{zone}"}),
            "is_proxy": False,
            "incarnation": rng.randint(0, 9),
            "state": state,
            "version": "0.1.0",
            "is_self": i == 0,
            "checks": checks,
            "services": [],
        })
    return json.dumps(out).encode()


def serve(files, members, info):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, body, headers):
            self.send_response(200)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "date", "connection", "transfer-encoding"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path in files:
                return self.answer(*files[path])
            if path == "/agent/members":
                return self.answer(members, {"Content-Type": "application/json"})
            if path == "/agent/info":
                return self.answer(info, {"Content-Type": "application/json"})
            if path == "/monitoring/state":
                return self.answer(b'{"node":"web-eu-west-0000","uuid":"00000000-0000-4000-8000-000000000000","is_self":true,"checks":[]}',
                                   {"Content-Type": "application/json"})
            if path == "/ui/events":
                # A live stream that says hello and stays open, as the agent's does.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    self.wfile.write(b'event: hello\ndata: {"channels":["node"]}\n\n')
                    self.wfile.flush()
                    # Keepalives, as the agent sends: the write fails once the page is gone.
                    while True:
                        time.sleep(1)
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                except OSError:
                    pass
                return
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def webdriver(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["value"]


def main():
    work = tempfile.mkdtemp()
    agent, api = start_agent(work)
    try:
        files = take_ui(api)
        info = fetch(f"http://{api}/agent/info")[0]
    finally:
        agent.kill()
        agent.wait()
    weight = sum(len(b) for b, _ in files.values())
    members = synthetic_members()
    port = serve(files, members, info)
    dport = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={dport}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(100):
            try:
                webdriver(dport, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        session = webdriver(dport, "POST", "/session", {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]}}}})
        sid = session["sessionId"]
        times = []
        for _ in range(RUNS):
            webdriver(dport, "POST", f"/session/{sid}/url", {"url": "about:blank"})
            webdriver(dport, "POST", f"/session/{sid}/url", {"url": f"http://127.0.0.1:{port}/ui/"})
            for _ in range(200):
                ms = webdriver(dport, "POST", f"/session/{sid}/execute/sync", {"script": (
                    "const m = performance.getEntriesByName('overview-rendered')[0];"
                    "return m ? [m.startTime, document.querySelectorAll('tr.member').length] : null"),
                    "args": []})
                if ms:
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("the overview never rendered")
            assert ms[1] == MEMBERS, ms
            times.append(ms[0])
        webdriver(dport, "DELETE", f"/session/{sid}")
    finally:
        os.killpg(driver.pid, 9)
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"UI weight (page + files, before gzip): {weight / 1024:.1f} KiB")
    print(f"{chromium}, headless, 1280x900, {MEMBERS} members ({len(members) / 1024:.0f} KiB of JSON)")
    print("runs (ms):", " ".join(f"{t:.0f}" for t in times))
    med = statistics.median(times)
    print(f"navigation start -> overview rendered: median {med:.0f} ms, first (cold) {times[0]:.0f} ms, "
          f"target <= {TARGET_MS} ms: {'met' if med <= TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
