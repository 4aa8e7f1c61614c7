"""Two-stage (ROI head) classifiers, one module per method (imported for registration)."""

from . import (
    background_eql,  # noqa: F401
    bags,  # noqa: F401
    bucketed,  # noqa: F401
    droploss,  # noqa: F401
    eql,  # noqa: F401
    eqlv2,  # noqa: F401
    eqlv2_softmax2c,  # noqa: F401
    federated,  # noqa: F401
    lgr,  # noqa: F401
    seesaw,  # noqa: F401
    sigmoid_bce,  # noqa: F401
    softmax_ce,  # noqa: F401
)
