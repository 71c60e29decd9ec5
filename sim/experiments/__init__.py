"""Experiment sweeps: many simulations over a grid of configurations and seeds.

The parts, in the order a sweep uses them:

* :mod:`sim.experiments.grid` — the plan: ``--grid FIELD=V1,V2`` (or a ``[sweep]`` table in
  TOML) over any :class:`~sim.config.SimConfig` field, times ``--seeds K``; one run
  directory per cell and seed, named after its values.
* :mod:`sim.experiments.executors` — where runs execute: inline, a local process pool, or a
  Ray cluster. A worker returns the run's records and summary; the driver writes every
  file, so a cluster's workers need no shared file system.
* :mod:`sim.experiments.analysis` — one row per run (grid values, seed, graph properties,
  receive rates, final metrics, periods to target, the fitted consensus decay rate) and the
  aggregation over seeds (means with 95% Student-t confidence intervals), rank correlations.
* :mod:`sim.experiments.report` — ``report.md`` and its PNGs: the topology convergence report.
* :mod:`sim.experiments.sweep` — runs a plan: skips finished runs, shows progress, writes
  ``results.csv``, ``aggregate.csv`` and the report.
"""
