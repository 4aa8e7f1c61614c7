"""Helpers shared by the tests (pytest's ``pythonpath = ["tests"]`` makes this package
importable as ``helpers``); fixtures stay in tests/conftest.py.

- ``helpers.config``: the repository root, the demo config and ``load_config``.
- ``helpers.gloo``: run a function in several CPU processes joined by gloo, and compare the
  state they end with to one process's.
- ``helpers.lvis``: a small LVIS-format json of square boxes, detections evaluated on it.
- ``helpers.train_net``: train_net.py imported as a module, its loggers restored after.
- ``helpers.tiny_dense``: a tiny one-stage detector config and batch.
- ``helpers.training``: what a finished ``LTTrainer`` run evaluated, read from its storage.

Two scripts run train_net.py in a subprocess with one change each:
``dump_state_train_net.py`` (saves every process's classifier state after training) and
``unreadable_train_set_train_net.py`` (registers a training set that cannot be read).
"""
