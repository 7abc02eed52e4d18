"""Joining a Dask scheduler given by the user (``--dask-address``, a flow's ``dask_address``).

Every stage that runs on a cluster connects through :func:`connect`, so an address where no
scheduler answers is the same one line for ingest, vectorize and segment, within
:data:`CONNECT_TIMEOUT_S` and before any work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["CONNECT_TIMEOUT_S", "connect", "no_scheduler"]

CONNECT_TIMEOUT_S = 10  # an address that does not answer fails well within the 30 s users wait


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[Client | None]:
    """A ``distributed.Client`` of the scheduler at ``address`` (None: no cluster, yields None).

    A scheduler that does not answer within :data:`CONNECT_TIMEOUT_S` is a ConfigError
    naming the address, raised before any expensive work.
    """
    if not address:
        yield None
        return
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise no_scheduler(address, "--dask-address") from exc
    with client:
        yield client


def no_scheduler(address: str, setting: str) -> ConfigError:
    """The one line for an ``address`` where no scheduler answered; ``setting`` names what the
    user gave it as (``--dask-address``, a flow's ``dask_address``)."""
    return ConfigError(
        f"no Dask scheduler answers at {address} (waited {CONNECT_TIMEOUT_S} s): "
        f"start one there (dask scheduler) or fix {setting}"
    )
