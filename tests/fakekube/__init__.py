"""A fake Kubernetes API server for the tests: stateful, in memory, over real HTTP.

No kube-apiserver runs here, and the available mocks get generateName, 201 bodies,
selectors and resourceVersion wrong; this one is faithful for what Triggerfish and its
tests use, through the real ``kubernetes`` client and the real ``kubectl``. It is not
a conformant implementation: see ``server.py`` for what is and is not covered.

Modules, from the outside in:

- ``fixtures.py``: ``fake_kube_server`` (session) and ``kube_api`` (per test, reset);
- ``harness.py``: :class:`KubeApi` (url, kubeconfig, clients, kubectl) for tests;
- ``process.py``: the server as a child process; ``kubeconfig.py``: config files;
- ``server.py``: the ASGI app (discovery, OpenAPI, ``/fake/`` admin endpoints);
- ``api.py``: resource URLs and verbs; ``store.py``: objects, versions, watches;
- ``resources.py``: the kind table; ``schema.py``, ``validation.py``, ``selectors.py``,
  ``patches.py``, ``tables.py``, ``protobuf.py``, ``discovery.py``, ``openapi.py``,
  ``errors.py``: one concern each.

Run it alone with ``python -m tests.fakekube --port 0`` (prints the URL when ready).
"""
