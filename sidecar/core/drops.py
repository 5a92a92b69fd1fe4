"""Why items were lost on purpose: the `reason` label of sidecar_dropped_items_total.

One closed set, so every signal x reason series exists (at 0) from the first scrape and
`rate()` / `absent()` alerts work before the first drop, and so no call site can invent a reason
that dashboards do not know.
"""

from __future__ import annotations

import enum


class DropReason(enum.StrEnum):
    DEGRADATION_SAMPLED = "degradation_sampled"  # level 2: sampled out
    DEGRADATION_ESSENTIAL = "degradation_essential"  # level 3: not essential
    UPSTREAM_REJECTED = "upstream_rejected"  # the upstream's partial success
    DEAD_LETTER_EVICTED = "dead_letter_evicted"  # pushed out of the full dead-letter store
    DEAD_LETTER_EXPIRED = "dead_letter_expired"  # older than dead_letter.max_age
    SHUTDOWN = "shutdown"  # a memory queue not drained within shutdown_timeout
    CORRUPT = "corrupt"  # an unreadable row of the disk queue
