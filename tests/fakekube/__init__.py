"""A fake Kubernetes API server for the tests (see server.py)."""
