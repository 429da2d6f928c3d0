"""FastAPI serving layer for the sequential recommenders in `model/`.

Build an app with `server.app.create_app(Settings(...))`; run one with `python -m server`.
Depends on `model/` through `model.checkpoint.load` and `model.inference.Engine` (and
`model.allocator` for the malloc `python -m server` runs on).
"""
