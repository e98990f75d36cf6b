"""Python client of driftd, the drift-monitoring daemon.

    from driftd_client import DriftClient

    drift = DriftClient("127.0.0.1:7700", model="fraud", version="v3")
    drift.log(features={"amount": [12.5, 80.1], "country": ["DE", "FR"]},
              predictions={"score": [0.1, 0.9]})   # returns at once
    drift.status()                                  # synchronous GetStatus

See DriftClient for batching, the bounded queue and its counters.
"""

from ._client import DriftClient, DriftdError

__all__ = ["DriftClient", "DriftdError"]
__version__ = "0.1.0"
