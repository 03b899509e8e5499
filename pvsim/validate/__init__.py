"""`pvsim validate`: one scenario run twice, on a real fleet (Hub + `pvreal fleet`) and in pvsim,
with the same releases, strategy and fault schedule, and the two compared (docs/validation.md).

Modules: `plan` (what both worlds run: releases, faults, time scale), `realrevs` (the scenario's
revisions as real states), `realrun` (the real fleet's run and its timeline), `simrun` (pvsim's
run and the same timeline), `timeline` (the format both write), `compare` (counts, sequences,
time to commit, the verdict), `calibrate` (device figures fitted from a real timeline).
Nothing here decides what Pantavisor or a rollout does: both worlds run shared/.
"""
