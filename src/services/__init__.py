"""Async clients for the external services the agent uses."""
