"""Kubernetes resource quantities (``100m``, ``512Mi``, ``1.5``, ``2e3``).

Steps size themselves with the same quantity syntax Kubernetes uses, so the
parser follows ``k8s.io/apimachinery/pkg/api/resource``: a signed decimal
number followed by an optional binary (``Ki``..``Ei``), decimal (``n``..``E``)
or exponent (``e3``) suffix. Values are compared exactly, as ``Decimal``.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

EXAMPLES = "e.g. 500m or 2 for CPU, 512Mi or 1Gi for memory"
# Kubernetes' own bound on any quantity; it also keeps a hostile "1e999999" from becoming a
# million-digit integer when a memory limit is turned into bytes
MAX_QUANTITY = Decimal(2**63 - 1)


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


@functools.lru_cache(maxsize=4096)
def parse_quantity(value: str | int | float) -> Decimal:
    """Return the exact value of a quantity; raise QuantityError when it is not one.

    Cached: a repository repeats the same few quantities thousands of times.
    """
    if isinstance(value, bool):
        raise QuantityError(f"expected a quantity ({EXAMPLES}), got a boolean")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity ({EXAMPLES})")
    try:
        amount = _amount(match["number"], match["suffix"] or "")
    except (ArithmeticError, ValueError) as exc:  # an exponent out of Decimal's range
        raise QuantityError(f"{value!r} is out of range ({EXAMPLES})") from exc
    if abs(amount) > MAX_QUANTITY:
        raise QuantityError(
            f"{value!r} is more than the largest quantity Kubernetes accepts, 2^63-1 ({EXAMPLES})"
        )
    return amount


def _amount(digits: str, suffix: str) -> Decimal:
    number = Decimal(digits)
    if suffix in _BINARY:
        return number * (Decimal(2) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    if suffix:
        return number.scaleb(int(suffix[1:]))
    return number


def parse_nonnegative_quantity(value: str | int | float) -> Decimal:
    """Like parse_quantity, but a negative amount is an error (CPU and memory)."""
    amount = parse_quantity(value)
    if amount < 0:
        raise QuantityError(f"{value!r} is negative; resources must be zero or more")
    return amount


def memory_bytes(value: str | int | float) -> int:
    """Memory quantity as whole bytes, rounded up (as the kubelet does)."""
    amount = parse_nonnegative_quantity(value)
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))
