"""train_net.py imported as a module (it is a script, not part of the package), and its
command-line arguments for the demo config."""

import importlib.util
import logging
import os
from contextlib import contextmanager

from detectron2.engine import default_argument_parser

from .config import DEMO_CONFIG, REPO


def import_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_args(*argv):
    """train_net.py's parsed arguments: ``--config-file <demo config>`` then ``argv``."""
    return default_argument_parser().parse_args(["--config-file", DEMO_CONFIG, *argv])


@contextmanager
def loggers_restored():
    """train_net.setup configures the 'lt_d2', 'detectron2' and 'fvcore' loggers (handlers,
    propagation): put them back so that later tests' caplog still sees their records."""
    names = ("lt_d2", "detectron2", "fvcore")
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names
    }
    try:
        yield
    finally:
        for n, (handlers, propagate) in saved.items():
            logger = logging.getLogger(n)
            for h in logger.handlers:
                if h not in handlers:
                    h.flush()
                    logger.removeHandler(h)
            logger.propagate = propagate
