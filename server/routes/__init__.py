"""HTTP routes, thin by rule: schema in -> one service call -> schema out. Registered in server.app."""

from . import events, ops, recommend, users

__all__ = ["events", "ops", "recommend", "users"]
