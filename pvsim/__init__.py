"""pvtwin's simulator: SimPy devices, faults, hub, rollout strategies, fleets and reports."""
