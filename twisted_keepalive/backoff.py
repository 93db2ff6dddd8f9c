"""
Retry policies: plain callables C{attempt -> seconds}, as
L{twisted.application.internet.ClientService} takes for C{retryPolicy}.

C{attempt} is the number of consecutive failures so far, counting from 1
as C{ClientService} does: the first retry waits C{policy(1)}, which is
C{initialDelay} before jitter (0 is treated as 1).  The result never
exceeds C{maxDelay}, jitter included.  The random source is injected so that
tests (and simulations of a fleet) are exact.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable

RetryPolicy = Callable[[int], float]

GROWTHS = ("fixed", "linear", "exponential")
JITTERS = ("none", "full", "equal", "decorrelated", "proportional")


def jitteredBackoff(
    growth: str = "exponential",
    *,
    initialDelay: float = 1.0,
    maxDelay: float = 60.0,
    factor: float = 2.0,
    jitter: str = "full",
    spread: float = 0.2,
    random: Callable[[], float] = _random.random,
) -> RetryPolicy:
    """
    Build a retry policy.  (Not named C{backoffPolicy}: Twisted's function
    of that name takes C{initialDelay, maxDelay, factor} positionally; every
    argument here but C{growth} is keyword-only, so neither can be mistaken
    for the other.)

    Growth of the base delay C{v(n)}, with C{n = attempt - 1}:
     - C{fixed}: C{initialDelay};
     - C{linear}: C{initialDelay * (n + 1)};
     - C{exponential}: C{initialDelay * factor ** n};
    each capped at C{maxDelay}.  Jitter (the names of the AWS analysis,
    "Exponential Backoff And Jitter"):
     - C{none}: C{v};
     - C{full}: uniform in C{[0, v]} (spreads a herd best);
     - C{equal}: C{v / 2} plus uniform in C{[0, v / 2]};
     - C{decorrelated}: uniform in C{[initialDelay, 3 * previous]}, capped
       (ignores C{growth}; restarts from C{initialDelay} at attempt 1);
     - C{proportional}: C{v * (1 + u)} with C{u} uniform in
       C{[-spread, +spread]} (gRPC's +-20 %).

    @param random: returns a float in C{[0, 1)}.
    @raise ValueError: for an unknown name or a bad number, with a message
        that says which.
    """
    if not isinstance(growth, str) or growth not in GROWTHS:
        raise ValueError(f"unknown backoff {growth!r}; choose one of {', '.join(GROWTHS)}")
    if jitter not in JITTERS:
        raise ValueError(f"unknown jitter {jitter!r}; choose one of {', '.join(JITTERS)}")
    if not initialDelay >= 0:
        raise ValueError(f"initial delay must be >= 0, not {initialDelay!r}")
    if not maxDelay >= initialDelay:
        raise ValueError(f"max delay ({maxDelay!r}) must be >= initial delay ({initialDelay!r})")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, not {factor!r}")
    if not 0 <= spread <= 1:
        raise ValueError(f"spread must be between 0 and 1, not {spread!r}")

    def base(attempt: int) -> float:
        if growth == "fixed":
            value = initialDelay
        elif growth == "linear":
            value = initialDelay * (attempt + 1)
        else:
            try:
                value = initialDelay * factor**attempt
            except OverflowError:
                value = math.inf
        return min(value, maxDelay)

    previous = initialDelay

    def policy(attempt: int) -> float:
        nonlocal previous
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        n = max(attempt, 1) - 1
        if jitter == "decorrelated":
            if n == 0:
                previous = initialDelay
            upper = max(initialDelay, previous * 3)
            delay = initialDelay + random() * (upper - initialDelay)
            previous = min(maxDelay, delay)
            return previous
        value = base(n)
        if jitter == "full":
            delay = random() * value
        elif jitter == "equal":
            delay = value / 2 + random() * value / 2
        elif jitter == "proportional":
            delay = value * (1 + spread * (2 * random() - 1))
        else:
            delay = value
        return min(max(delay, 0.0), maxDelay)

    return policy
