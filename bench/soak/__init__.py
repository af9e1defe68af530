"""The soak run (issue 13): load, faults and the invariants checked after every run."""
