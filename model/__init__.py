"""PLR sequential recommender: data, models, training, evaluation, incremental inference.

Importable with torch and numpy alone (no web, no Redis): the server builds on this package.
"""

__all__ = ["load"]


def __getattr__(name):
    # Lazy so `import model.data` stays numpy-only; `model.load` pulls in torch on first use.
    if name == "load":
        from .checkpoint import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
