#!/usr/bin/env python3
"""Fleet-wide command execution on real processes: `opsbro executors exec` beside `serf query`,
same machine, same run (BENCHMARKS.md, issue 25).

Start N agents of each system on 127.0.0.1 and join them into one cluster; then, R times, ask the
first agent to run `echo ok` on every node and time how long until all N results are in:

- opsbro: `POST /executors/exec` on agent 0 (a request signed with the operator key of its
  `executor.private_key_file`; every agent authorizes that key), reading the NDJSON answer until
  the N-th `result` line. Each target verifies the Ed25519 signature, runs `/bin/sh -c 'echo ok'`
  and answers over the sealed cluster transport.
- serf: the `query` RPC on agent 0, every agent running `echo ok` as its query handler
  (`-event-handler query:bench=...`; serf answers a query with the handler's output), reading the
  streamed responses until the N-th.

    python3 bench/exec_bench.py [--agents 20] [--trials 5] [--opsbro target/release/opsbro]

Only loopback is used. `bench/exec_bench.sh` installs serf and msgpack and builds opsbro first.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gossip_real import Opsbro, Serf, SerfRpc, cluster, free_port, free_udp_tcp_port  # noqa: E402

COMMAND = "echo ok"


class OpsbroExec(Opsbro):
    def __init__(self, binary, tmp):
        super().__init__(binary, tmp)
        self.key = os.path.join(tmp, "operator.key")
        out = subprocess.run([binary, "executors", "keygen", "--out", self.key, "--comment", "bench"],
                             check=True, capture_output=True, text=True)
        self.public = out.stdout.strip().splitlines()[-1]

    def start(self, i):
        port, api = free_udp_tcp_port(), free_port()
        d = os.path.join(self.tmp, f"o{i}")
        os.makedirs(d, exist_ok=True)
        config = os.path.join(self.tmp, f"o{i}.yml")
        with open(config, "w") as f:
            f.write(f"executor:\n  authorized_keys:\n    - {self.public}\n  private_key_file: {self.key}\n"
                    "  max_per_minute: 6000\n")
        p = subprocess.Popen(
            [self.binary, "agent", "start", "--config", config, "--data-dir", d, "--bind", "127.0.0.1",
             "--port", str(port), "--api-port", str(api), "--dns-port", "0", "--node-name", f"o{i}",
             "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("OPSBRO_")})
        return {"proc": p, "name": f"o{i}", "gossip": f"127.0.0.1:{port}", "api": f"127.0.0.1:{api}", "dir": d}

    def exec_all(self, a, n):
        with open(os.path.join(a["dir"], "api.token")) as f:
            token = f.read().strip()
        body = json.dumps({"group": "*", "command": COMMAND, "timeout_secs": 10}).encode()
        req = urllib.request.Request(f"http://{a['api']}/executors/exec", data=body, method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        start = time.monotonic()
        ok = 0
        with urllib.request.urlopen(req, timeout=30) as r:
            for line in r:
                msg = json.loads(line)
                if msg["type"] == "result":
                    if msg.get("rc") != 0 or msg.get("stdout") != "ok\n":
                        raise RuntimeError(f"bad result: {msg}")
                    ok += 1
                    if ok == n:
                        return time.monotonic() - start
        raise RuntimeError(f"only {ok} of {n} results")


class SerfQuery(Serf):
    def start(self, i):
        port, rpc = free_udp_tcp_port(), free_port()
        p = subprocess.Popen(
            [self.binary, "agent", f"-node=s{i}", f"-bind=127.0.0.1:{port}", f"-rpc-addr=127.0.0.1:{rpc}",
             "-log-level=err", f"-event-handler=query:bench={COMMAND}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {"proc": p, "name": f"s{i}", "gossip": f"127.0.0.1:{port}", "api": f"127.0.0.1:{rpc}"}

    def exec_all(self, a, n):
        rpc = SerfRpc(a["api"])  # a connection of its own: the query streams on it
        rpc.seq += 1
        seq = rpc.seq
        start = time.monotonic()
        rpc.sock.sendall(msgpack.packb({"Command": "query", "Seq": seq}))
        rpc.sock.sendall(msgpack.packb({"FilterNodes": [], "FilterTags": {}, "RequestAck": False,
                                        "Timeout": 10 * 10**9, "Name": "bench", "Payload": b""}))
        header = rpc._read()
        if header.get("Error"):
            raise RuntimeError(header["Error"])
        got = 0
        while True:
            header = rpc._read()
            record = rpc._read()
            if record.get("Type") == "response":
                if bytes(record.get("Payload") or b"") != b"ok\n":
                    raise RuntimeError(f"bad response: {record}")
                got += 1
                if got == n:
                    elapsed = time.monotonic() - start
                    rpc.sock.close()
                    return elapsed
            elif record.get("Type") == "done":
                raise RuntimeError(f"only {got} of {n} responses")


def run(system, n, trials):
    with cluster(system, n) as agents:
        system.exec_all(agents[0], n)  # warm up (handler paths, connections)
        times = []
        for _ in range(trials):
            time.sleep(0.5)
            times.append(system.exec_all(agents[0], n))
        return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--opsbro", default="target/release/opsbro")
    ap.add_argument("--serf", default=shutil.which("serf") or "serf")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for system in (OpsbroExec(args.opsbro, tmp), SerfQuery(args.serf, tmp)):
            times = run(system, args.agents, args.trials)
            print(f"{system.name:7} `{COMMAND}` on {args.agents} agents, all results in: median "
                  f"{statistics.median(times) * 1000:.1f} ms (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}); "
                  f"{args.trials} trials", flush=True)


if __name__ == "__main__":
    main()
