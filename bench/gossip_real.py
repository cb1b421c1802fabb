#!/usr/bin/env python3
"""Membership on real processes: opsbro beside serf, same machine, same run (BENCHMARKS.md).

For each system: start N agents on 127.0.0.1 and join them into one cluster; then, R times,
start one more agent, ask it to join, and time how long until every one of the N agents lists it
as alive ("new node seen by all"); then `kill -9` it and time until every one lists it as
dead/failed. Each agent is polled through its own API (opsbro: local HTTP API; serf: its msgpack
RPC) by one thread per agent every 10 ms.

    python3 bench/gossip_real.py [--agents 20] [--trials 5] [--opsbro target/release/opsbro]

Only loopback is used. Needs `serf` (Debian package) and the `msgpack` Python module; run
`bench/gossip_real.sh` to install them and build opsbro first.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

import msgpack


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_tcp_port():
    while True:
        p = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue


def agent_env():
    """The environment of a benchmark agent: no OPSBRO_* of the caller's shell, and no cloud
    metadata probe (that traffic would leave the machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBRO_")}
    env["OPSBRO_HOSTING_DRIVER"] = "none"
    return env


class System:
    """What both systems offer the benchmark: start, members, join."""

    def ready(self, a):
        try:
            return self.members(a) is not None
        except Exception:
            return False


class Opsbro(System):
    name = "opsbro"

    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp

    def start(self, i):
        port, api = free_udp_tcp_port(), free_port()
        d = os.path.join(self.tmp, f"o{i}")
        p = subprocess.Popen(
            [self.binary, "agent", "start", "--data-dir", d, "--bind", "127.0.0.1", "--port", str(port),
             "--api-port", str(api), "--node-name", f"o{i}", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=agent_env())
        return {"proc": p, "name": f"o{i}", "gossip": f"127.0.0.1:{port}", "api": f"127.0.0.1:{api}", "dir": d}

    def members(self, a):
        with urllib.request.urlopen(f"http://{a['api']}/agent/members", timeout=2) as r:
            return {m["name"]: m["state"] for m in json.load(r)}

    def join(self, a, target):
        # Changing routes need the agent's API token (written to its data dir at start; agents
        # from before the token had none).
        headers = {"content-type": "application/json"}
        token_file = os.path.join(a["dir"], "api.token")
        if os.path.exists(token_file):
            with open(token_file) as f:
                headers["authorization"] = f"Bearer {f.read().strip()}"
        req = urllib.request.Request(f"http://{a['api']}/agent/join", data=json.dumps({"addr": target["gossip"]}).encode(),
                                     headers=headers, method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    alive, dead = "alive", "dead"


class SerfRpc:
    def __init__(self, addr):
        host, port = addr.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.seq = 0
        self.call("handshake", {"Version": 1}, body=False)

    def _read(self):
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("serf rpc closed")
            self.unpacker.feed(data)

    def call(self, command, args=None, body=True):
        self.seq += 1
        self.sock.sendall(msgpack.packb({"Command": command, "Seq": self.seq}))
        if args is not None:
            self.sock.sendall(msgpack.packb(args))
        header = self._read()
        if header.get("Error"):
            raise RuntimeError(header["Error"])
        return self._read() if body else None


class Serf(System):
    name = "serf"

    def __init__(self, binary, tmp):
        self.binary = binary
        self.rpcs = {}

    def start(self, i):
        port, rpc = free_udp_tcp_port(), free_port()
        p = subprocess.Popen(
            [self.binary, "agent", f"-node=s{i}", f"-bind=127.0.0.1:{port}", f"-rpc-addr=127.0.0.1:{rpc}", "-log-level=err"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {"proc": p, "name": f"s{i}", "gossip": f"127.0.0.1:{port}", "api": f"127.0.0.1:{rpc}"}

    def rpc(self, a):
        key = (a["api"], threading.get_ident())
        if key not in self.rpcs:
            self.rpcs[key] = SerfRpc(a["api"])
        return self.rpcs[key]

    def members(self, a):
        return {m["Name"]: m["Status"] for m in self.rpc(a).call("members", None)["Members"]}

    def join(self, a, target):
        self.rpc(a).call("join", {"Existing": [target["gossip"]], "Replay": False})

    alive, dead = "alive", "failed"


def wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError(what)


def time_until_all(system, agents, name, state, start, timeout=120.0):
    """Seconds from `start` until every agent lists `name` in `state` (one polling thread each)."""
    seen = {}

    def poll(a):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if system.members(a).get(name) == state:
                    seen[a["name"]] = time.monotonic() - start
                    return
            except Exception:
                pass
            time.sleep(0.01)

    threads = [threading.Thread(target=poll, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(seen) < len(agents):
        raise TimeoutError(f"{len(agents) - len(seen)} agents never saw {name} {state}")
    return max(seen.values())


def form_cluster(system, agents):
    """Wait until every agent is up, join them all through the first, wait until all see all."""
    n = len(agents)
    for a in agents:
        wait(lambda a=a: system.ready(a), 30, f"{a['name']} up")
    for a in agents[1:]:
        system.join(a, agents[0])
    wait(lambda: all(sum(1 for s in system.members(a).values() if s == system.alive) == n for a in agents), 120, "cluster formed")


@contextlib.contextmanager
def cluster(system, n):
    """N agents of `system` formed into one cluster, killed on the way out."""
    agents = [system.start(i) for i in range(n)]
    try:
        form_cluster(system, agents)
        yield agents
    finally:
        for a in agents:
            a["proc"].kill()
        for a in agents:
            a["proc"].wait()


def run(system, n, trials):
    with cluster(system, n) as agents:
        joins, deaths = [], []
        for t in range(trials):
            new = system.start(n + t)
            wait(lambda: system.ready(new), 30, "new agent up")
            start = time.monotonic()
            system.join(new, agents[t % n])
            joins.append(time_until_all(system, agents, new["name"], system.alive, start))
            time.sleep(2)
            start = time.monotonic()
            new["proc"].send_signal(signal.SIGKILL)
            new["proc"].wait()
            deaths.append(time_until_all(system, agents, new["name"], system.dead, start))
        return joins, deaths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--opsbro", default="target/release/opsbro")
    ap.add_argument("--serf", default=shutil.which("serf") or "serf")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for system in (Opsbro(args.opsbro, tmp), Serf(args.serf, tmp)):
            joins, deaths = run(system, args.agents, args.trials)
            print(f"{system.name:7} {args.agents} agents: new node seen by all: median {statistics.median(joins):.2f} s "
                  f"(min {min(joins):.2f}, max {max(joins):.2f}); kill -9 seen dead by all: median "
                  f"{statistics.median(deaths):.2f} s (min {min(deaths):.2f}, max {max(deaths):.2f}); {args.trials} trials", flush=True)


if __name__ == "__main__":
    main()
