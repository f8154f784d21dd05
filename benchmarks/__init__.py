"""FlowMaestro's benchmarks: run each from the repository root as a module, e.g.
``python -m benchmarks.compile`` (``make bench`` runs compile and engine). They share the
test suite's process helpers (``tests/processes.py``); tests/test_benchmarks_smoke.py runs
each at tiny sizes so that they keep working."""
