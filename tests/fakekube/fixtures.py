"""pytest fixtures that run the fake Kubernetes API (filled in with the server)."""
