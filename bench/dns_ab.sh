#!/usr/bin/env bash
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
# A/B of the A-record DNS path between two opsbro binaries (e.g. a release build of an older
# commit in a git worktree, and this one), interleaved, with unbound
# beside them: client-bound rate (10 s) and CPU at 20k q/s (10 s), 3 rounds.
set -uo pipefail
NEW="${2:?usage: bench/dns_ab.sh OLD_BINARY NEW_BINARY}"
OLD="${1:?usage: bench/dns_ab.sh OLD_BINARY NEW_BINARY}"
W=$(mktemp -d)
NAME=redis.group.opsbro
echo "$NAME A" > $W/q
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # label port pid
  local one t0 t1 cpu
  for _ in $(seq 1 100); do dig -p "$2" @127.0.0.1 $NAME +short +time=1 | grep -q . && break; sleep 0.1; done
  one=$(dnsperf -s 127.0.0.1 -p "$2" -d $W/q -l 10 2>&1 | awk '/Queries per second/ {print $4}')
  t0=$(ticks "$3"); dnsperf -s 127.0.0.1 -p "$2" -d $W/q -l 10 -Q 20000 -c 4 -T 2 >/dev/null 2>&1; t1=$(ticks "$3")
  cpu=$(awk -v a=$t0 -v b=$t1 'BEGIN {printf "%.1f", (b-a)/10}')
  echo "$1 client-bound $one q/s, cpu@20k $cpu%"
}
agent() { # bin dir port
  mkdir -p $W/$2; printf 'groups: [redis]\n' > $W/$2/agent.yml
  "$1" agent start --config $W/$2/agent.yml --data-dir $W/$2/data --bind 127.0.0.1 --port $(( $3 + 100 )) --api-port $(( $3 + 200 )) --dns-port $3 --log-level warn >$W/$2.log 2>&1 &
  echo $!
}
cat > $W/unbound.conf <<CONF
server:
    interface: 127.0.0.1
    port: 17868
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$W"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 2
    access-control: 127.0.0.0/8 allow
    local-zone: "opsbro." static
    local-data: "$NAME. 30 IN A 127.0.0.1"
remote-control:
    control-enable: no
CONF
for r in 1 2 3; do
  p=$(agent $NEW new$r 17866); run "new r$r" 17866 $p; kill $p; wait $p 2>/dev/null
  p=$(agent $OLD old$r 17867); run "old r$r" 17867 $p; kill $p; wait $p 2>/dev/null
  unbound -d -c $W/unbound.conf >/dev/null 2>&1 & p=$!; run "unbound r$r" 17868 $p; kill $p; wait $p 2>/dev/null
done
rm -rf $W
