"""A real fleet on one machine: N device daemons, each in its own network namespace, wired to a
Hub through a bridge in a namespace of the fleet's own, with fault injection (docs/fleet.md).

- `net`: namespaces, the bridge, veths, addresses, link state and netem (pyroute2 only)
- `relay`: the Hub relay between the fleet netns and the Hub on loopback; traffic shaping
- `procs`: starting, checking and stopping the daemons, the relay and the Hub
- `state`: DIR/fleet.json
- `lifecycle`: up, down, status
- `faults`: link-down/up, loss, latency, hub-restart, kill, power-cut
"""
