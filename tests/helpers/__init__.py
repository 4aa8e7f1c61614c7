"""Helpers shared by the tests (pytest's ``pythonpath = ["tests"]`` makes this package
importable as ``helpers``); fixtures stay in tests/conftest.py.

- ``helpers.config``: the repository root, the demo config and ``load_config``.
- ``helpers.gloo``: run a function in several CPU processes joined by gloo.
- ``helpers.lvis``: a small LVIS-format json of square boxes, detections evaluated on it.
- ``helpers.tiny_dense``: a tiny one-stage detector config and batch.
- ``helpers.training``: what a finished ``LTTrainer`` run evaluated, read from its storage.
"""
