"""Helpers for tests: tiny configs and synthetic inputs."""
