"""Bounds on what a request may carry and on what the registry may hold, checked before
any work.

Every check is cheap and runs first: a shape's rank is checked before its sizes
are multiplied, a string's length before it is looked up or echoed in an error.
A value over a limit gets INVALID_ARGUMENT; a registry that is full gets
RESOURCE_EXHAUSTED. Each message names the limit and the flag that sets it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.config import POSITIVE, flag
from services.common.errors import InvalidInput, Overloaded

# Names of applications, models and versions: no separator of store keys ("/"),
# of "name:version" strings (":") or of lists (","), no spaces, no control characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Limits:
    """Every bound, with its default; each is a flag `--max-<name>` of the frontend
    (`section(Limits, prefix="max-")`)."""

    rank: int = flag(32, "most dimensions of a tensor", check=POSITIVE)
    elements: int = flag(1 << 24, "most elements of a tensor", check=POSITIVE)
    tensor_bytes: int = flag(64 << 20, "most bytes of a tensor's data", check=POSITIVE)
    name_length: int = flag(128, "longest application, model or version name", check=POSITIVE)
    context_key_length: int = flag(256, "longest context key", check=POSITIVE)
    query_id_length: int = flag(64, "longest query id", check=POSITIVE)
    address_length: int = flag(256, "longest replica address", check=POSITIVE)
    policy_params: int = flag(64, "most policy parameters of an application", check=POSITIVE)
    param_length: int = flag(1024, "longest policy parameter value", check=POSITIVE)
    applications: int = flag(1000, "most applications", check=POSITIVE)
    models: int = flag(1000, "most models", check=POSITIVE)
    versions: int = flag(100, "most versions of one model", check=POSITIVE)
    replicas: int = flag(256, "most live replicas of one model", check=POSITIVE)
    linked_models: int = flag(32, "most models linked to one application", check=POSITIVE)

    def check_shape(self, shape: Sequence[int], what: str = "tensor") -> int:
        """The element count of `shape`, once its rank, sizes and count are within bounds.

        The rank is checked before anything else, and the product stops as soon as
        it passes the limit, so a hostile shape costs at most `rank` multiplications.
        """
        if len(shape) > self.rank:
            raise InvalidInput(f"{what} of rank {len(shape)} exceeds the limit of {self.rank} "
                               "dimensions (--max-rank)")
        if any(size < 0 for size in shape):
            raise InvalidInput(f"bad shape {list(shape)}: sizes must be >= 0")
        count = 1
        for size in shape:
            count *= size
            if count > self.elements:
                raise InvalidInput(
                    f"{what} of shape {list(shape)} exceeds the limit of {self.elements} "
                    "elements (--max-elements)")
        return count

    def check_bytes(self, size: int, what: str = "tensor") -> None:
        if size > self.tensor_bytes:
            raise InvalidInput(f"{what} of {size} bytes exceeds the limit of "
                               f"{self.tensor_bytes} bytes (--max-tensor-bytes)")

    def check_name(self, kind: str, name: str) -> None:
        """An application, model or version name: present, short and plain."""
        if not name:
            raise InvalidInput(f"{kind} name is empty")
        self.check_length(f"{kind} name", name, self.name_length, "--max-name-length")
        if NAME_PATTERN.fullmatch(name) is None:
            raise InvalidInput(
                f"{kind} name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit")

    def check_context_key(self, key: str) -> None:
        self.check_length("context_key", key, self.context_key_length,
                          "--max-context-key-length")

    def check_query_id(self, query_id: str) -> None:
        self.check_length("query_id", query_id, self.query_id_length, "--max-query-id-length")
        if any(c.isspace() or not c.isprintable() for c in query_id):
            raise InvalidInput(f"query_id {short_repr(query_id)} has spaces or control "
                               "characters")

    def check_address(self, address: str) -> None:
        self.check_length("address", address, self.address_length, "--max-address-length")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"address {short_repr(address)} is not HOST:PORT")
        if any(c.isspace() or not c.isprintable() for c in host):
            raise InvalidInput(f"address {short_repr(address)} has spaces or control characters")

    def check_params(self, params: dict[str, str]) -> None:
        """Policy parameters: how many, and how long each key and value is."""
        if len(params) > self.policy_params:
            raise InvalidInput(f"{len(params)} policy_params exceed the limit of "
                               f"{self.policy_params} (--max-policy-params)")
        for key, value in params.items():
            self.check_length("policy_params key", key, self.name_length, "--max-name-length")
            self.check_length(f"policy_params[{short_repr(key)}]", value, self.param_length,
                              "--max-param-length")

    @staticmethod
    def check_length(what: str, value: str, limit: int, flag: str) -> None:
        if len(value) > limit:
            raise InvalidInput(f"{what} of {len(value)} characters exceeds the limit of "
                               f"{limit} ({flag})")

    @staticmethod
    def check_count(what: str, count: int, limit: int, flag: str) -> None:
        """Raise RESOURCE_EXHAUSTED when adding one more of `what` would pass `limit`."""
        if count >= limit:
            raise Overloaded(f"{what}: the limit of {limit} is reached ({flag})")


DEFAULT_LIMITS = Limits()


def short_repr(value: str, keep: int = 40) -> str:
    """`value` for an error message, cut so that a hostile one is not echoed whole."""
    return repr(value if len(value) <= keep else value[:keep] + "...")
