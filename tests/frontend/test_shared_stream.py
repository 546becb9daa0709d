"""The replicas at one address share one stream (services/frontend/replica_client.py):
it dials with the credential of the replica attached last, a stale client leaving does
not take its replacement with it, and the stream ends with the last replica."""

from __future__ import annotations

import pytest

from services.frontend.records import ReplicaRecord
from services.frontend.replica_client import ReplicaClient, SharedStream
from services.generated.clipper.v1 import clipper_pb2 as pb

ADDRESS = "127.0.0.1:9"  # never dialled: the stream is not started


def replica(stream: SharedStream, replica_id: str, model: str = "m") -> ReplicaClient:
    return ReplicaClient(ReplicaRecord(replica_id, model, "1", ADDRESS), f"cred-{replica_id}",
                         stream)


async def test_it_dials_with_the_replica_attached_last() -> None:
    stream = SharedStream(ADDRESS)
    old = replica(stream, "old")
    assert stream.dial_credential() == "cred-old"
    replica(stream, "new")  # the process started again at the address knows only this one
    assert stream.dial_credential() == "cred-new"
    await old.aclose()
    assert stream.dial_credential() == "cred-new" and not stream.closed


async def test_a_stale_client_leaving_keeps_its_replacement() -> None:
    stream = SharedStream(ADDRESS)
    stale = replica(stream, "r")
    current = replica(stream, "r")  # the same replica id, attached again
    await stale.aclose()
    assert stream.replicas == {"r": current} and not stream.closed
    await current.aclose()
    assert stream.closed
    with pytest.raises(RuntimeError, match="has ended"):
        replica(stream, "later")


async def test_each_replica_keeps_its_own_load_and_count() -> None:
    stream = SharedStream(ADDRESS)
    a, b = replica(stream, "a", "x"), replica(stream, "b", "y")
    response = pb.ContainerResponse()
    response.loads["a"].queue_depth = 3
    response.loads["b"].queue_depth = 5
    stream.unwrap(response)
    assert (a.queue_depth, b.queue_depth) == (3, 5)
    assert a.outstanding == b.outstanding == 0
    await a.aclose()
    await b.aclose()
