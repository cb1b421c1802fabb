#!/usr/bin/env python3
"""Locks on Raft: opsbro beside a 3-member etcd, same machine, same run (BENCHMARKS.md, issue 29).

1. Lock round trips over the HTTP APIs, one client, sequential (acquire then release = one round
   trip; latency p50/p99 and rate):
   - opsbro: `PUT /locks/bench?ttl=15s` then `DELETE /locks/bench?token=N` on a follower's API
     (the follower proposes; Raft forwards to the leader; the answer comes when its entry is
     applied) and on the leader's;
   - etcd: `POST /v3/lock/lock {name, lease}` then `POST /v3/lock/unlock {key}` with one lease
     granted beforehand and reused (etcd's most favourable case: `etcdctl lock` grants a lease per
     session on top).
2. The CLIs, sequential, process start included: `opsbro lock bench -- true` beside
   `etcdctl lock bench -- true` (Debian `etcd-client`), when etcdctl is installed.
3. Failover: `kill -9` the leader, then the time until another member reports a new leader
   (opsbro: `GET /raft/state` of each survivor every 10 ms; etcd: `POST /v3/maintenance/status`).

    python3 bench/raft_bench.py [--rounds 500] [--trials 5] [--opsbro target/release/opsbro]

Only loopback is used. `bench/raft_bench.sh` builds opsbro first.
"""

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gossip_real import Opsbro, agent_env, cluster, free_port  # noqa: E402


def http(method, url, body=None, token=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def report(label, lat):
    total = sum(lat)
    print(f"  {label:<48} {len(lat) / total:8.0f} round trips/s   p50 {pct(lat, 50) * 1000:6.2f} ms"
          f"   p99 {pct(lat, 99) * 1000:6.2f} ms", flush=True)


def token_of(agent):
    with open(os.path.join(agent["dir"], "api.token")) as f:
        return f.read().strip()


def raft_state(agent):
    return http("GET", f"http://{agent['api']}/raft/state", timeout=2)


def wait_group(agents, n, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            states = [raft_state(a) for a in agents]
            if all(s.get("leader") and len(s.get("voters", [])) == n for s in states):
                return states[0]["leader"]
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("the opsbro Raft group did not form")


def opsbro_round_trips(agent, rounds):
    token = token_of(agent)
    base = f"http://{agent['api']}/locks/bench"
    lat = []
    for _ in range(rounds):
        t = time.perf_counter()
        g = http("PUT", f"{base}?ttl=15s", token=token)
        http("DELETE", f"{base}?token={g['token']}", token=token)
        lat.append(time.perf_counter() - t)
    return lat


class Etcd:
    def __init__(self, tmp, n=3):
        self.tmp, self.n = tmp, n
        self.ports = [(free_port(), free_port()) for _ in range(n)]
        self.procs = [None] * n
        self.cluster = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(self.ports))

    def start(self, i, state="new"):
        c, p = self.ports[i]
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(self.tmp, f"e{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
             "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
             "--initial-cluster", self.cluster, "--initial-cluster-state", state, "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, i):
        return f"http://127.0.0.1:{self.ports[i][0]}"

    def status(self, i):
        return http("POST", f"{self.url(i)}/v3/maintenance/status", {}, timeout=1)

    def wait_leader(self, members, deadline=60):
        end = time.time() + deadline
        while time.time() < end:
            for i in members:
                try:
                    s = self.status(i)
                    if s.get("leader"):
                        return s["leader"]
                except Exception:
                    pass
            time.sleep(0.05)
        raise SystemExit("etcd has no leader")

    def member_index(self, leader_id):
        for i in range(self.n):
            try:
                if self.status(i)["header"]["member_id"] == leader_id:
                    return i
            except Exception:
                pass
        return None

    def stop(self):
        for p in self.procs:
            if p:
                p.kill()
                p.wait()


def etcd_round_trips(etcd, i, rounds):
    lease = http("POST", f"{etcd.url(i)}/v3/lease/grant", {"TTL": 15})["ID"]
    name = base64.b64encode(b"bench").decode()
    lat = []
    for _ in range(rounds):
        t = time.perf_counter()
        key = http("POST", f"{etcd.url(i)}/v3/lock/lock", {"name": name, "lease": lease})["key"]
        http("POST", f"{etcd.url(i)}/v3/lock/unlock", {"key": key})
        lat.append(time.perf_counter() - t)
    return lat


def cli_rounds(cmd, rounds):
    lat = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lat.append(time.perf_counter() - t)
    return lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--cli-rounds", type=int, default=50)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--opsbro", default="target/release/opsbro")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="opsbro-raft-bench.")
    try:
        print(f"== lock round trips, 3 members, one client, {args.rounds} rounds ({os.cpu_count()} cores)")
        system = Opsbro(os.path.abspath(args.opsbro), tmp)
        with cluster(system, 3) as agents:
            leader = wait_group(agents, 3)
            lead = next(a for a in agents if a["name"] == leader)
            follower = next(a for a in agents if a["name"] != leader)
            opsbro_round_trips(follower, 20)
            report("opsbro PUT+DELETE /locks (follower's API)", opsbro_round_trips(follower, args.rounds))
            report("opsbro PUT+DELETE /locks (leader's API)", opsbro_round_trips(lead, args.rounds))
            env = agent_env()
            opsbro_cli = [system.binary, "--api", follower["api"], "--token", token_of(follower),
                          "lock", "bench", "--", "true"]
            subprocess.run(opsbro_cli, check=True, env=env)
            report("opsbro lock bench -- true (CLI, follower)", cli_rounds(opsbro_cli, args.cli_rounds))
            print("== failover: kill -9 the leader, time until a survivor reports a new one")
            times = []
            for _ in range(args.trials):
                leader = wait_group(agents, 3)
                idx = next(k for k, a in enumerate(agents) if a["name"] == leader)
                survivors = [a for k, a in enumerate(agents) if k != idx]
                agents[idx]["proc"].kill()
                agents[idx]["proc"].wait()
                t = time.perf_counter()
                new = None
                while new is None and time.perf_counter() - t < 60:
                    for a in survivors:
                        try:
                            s = raft_state(a)
                            if s.get("leader") and s["leader"] != leader and s.get("role") in ("leader", "follower"):
                                new = s["leader"]
                                break
                        except Exception:
                            pass
                    time.sleep(0.01)
                times.append(time.perf_counter() - t)
                # Bring it back with its data (same ports and dir).
                a = agents[idx]
                port = a["gossip"].rsplit(":", 1)[1]
                a["proc"] = subprocess.Popen(
                    [system.binary, "agent", "start", "--data-dir", a["dir"], "--bind", "127.0.0.1", "--port", port,
                     "--api-port", a["api"].rsplit(":", 1)[1], "--node-name", a["name"], "--log-level", "warn",
                     "--seed", agents[(idx + 1) % 3]["gossip"]],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                time.sleep(1)
                wait_group(agents, 3)
            print(f"  opsbro new leader after kill -9: median {statistics.median(times):.2f} s, "
                  f"max {max(times):.2f} s over {len(times)} ({', '.join(f'{x:.2f}' for x in times)})", flush=True)

        etcd = Etcd(tmp)
        try:
            for i in range(3):
                etcd.start(i)
            etcd.wait_leader(range(3))
            time.sleep(1)
            print("== etcd, same machine")
            etcd_round_trips(etcd, 0, 20)
            leader_id = etcd.wait_leader(range(3))
            li = etcd.member_index(leader_id)
            fi = next(i for i in range(3) if i != li)
            report("etcd /v3/lock/lock+unlock (follower, one lease)", etcd_round_trips(etcd, fi, args.rounds))
            report("etcd /v3/lock/lock+unlock (leader, one lease)", etcd_round_trips(etcd, li, args.rounds))
            if shutil.which("etcdctl"):
                cmd = ["etcdctl", f"--endpoints={etcd.url(fi)}", "lock", "bench", "true"]
                env = dict(os.environ, ETCDCTL_API="3")
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                lat = []
                for _ in range(args.cli_rounds):
                    t = time.perf_counter()
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    lat.append(time.perf_counter() - t)
                report("etcdctl lock bench true (CLI, follower)", lat)
            times = []
            for _ in range(args.trials):
                leader_id = etcd.wait_leader(range(3))
                li = etcd.member_index(leader_id)
                etcd.procs[li].kill()
                etcd.procs[li].wait()
                t = time.perf_counter()
                survivors = [i for i in range(3) if i != li]
                new = None
                while new is None and time.perf_counter() - t < 60:
                    for i in survivors:
                        try:
                            s = etcd.status(i)
                            if s.get("leader") and s["leader"] != leader_id:
                                new = s["leader"]
                                break
                        except Exception:
                            pass
                    time.sleep(0.01)
                times.append(time.perf_counter() - t)
                etcd.start(li, state="existing")
                time.sleep(1)
                etcd.wait_leader(range(3))
            print(f"  etcd new leader after kill -9: median {statistics.median(times):.2f} s, "
                  f"max {max(times):.2f} s over {len(times)} ({', '.join(f'{x:.2f}' for x in times)})", flush=True)
        finally:
            etcd.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
