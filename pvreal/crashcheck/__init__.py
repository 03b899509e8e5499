"""`pvreal crashcheck`: the update kinds of `pvsim crashcheck` on real storage folders, the daemon
killed at every durable step and restarted, checked with the same invariants
(shared.engine.invariants). docs/real-backend.md, "Crash points on real files".

    kinds    the update kinds the real daemon can run, and why the others are left out
    daemon   one daemon process: the real Device with stand-in containers and a virtual clock
    runner   the enumeration: a reference run, every cut point, the restarts, the checks
"""
