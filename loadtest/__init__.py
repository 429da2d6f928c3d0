"""Load tests: open-loop locust traffic against the PLR server and an empty FastAPI floor.

`python -m loadtest.runner --mode short|full` starts both servers, runs the step plan and writes
docs/latency.md; the pure parts (workload, traffic, stats, prom) import neither locust nor torch.
"""
