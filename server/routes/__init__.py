"""HTTP routes, thin by rule: schema in -> one service call -> schema out. Registered in server.app."""

from . import events, items, ops, playground, recommend, users

__all__ = ["events", "items", "ops", "playground", "recommend", "users"]
