"""`pvsim validate`: one scenario run twice, on a real fleet (Hub + `pvreal fleet`) and in pvsim,
with the same releases, strategy and fault schedule, and the two compared (docs/validation.md).

Modules: `realrun` (the scenario as a plan for the real side, `pvreal.fleet.scenario_run`, run
in a child process: pvsim and pvreal stay independent), `simrun` (pvsim's run, the same
timeline), `timeline` (the format both write), `compare` (counts, sequences, time to commit, the
verdict), `calibrate` (device figures fitted from a real timeline), `display` and `report` (what
a person sees), `run` (the whole command).
Nothing here decides what Pantavisor or a rollout does: both worlds run shared/.
"""
