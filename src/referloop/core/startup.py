"""What a long-running process (the API, the worker) does once it has started."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, models, routes, schemas: several hundred thousand objects)
    out of the garbage collector's full passes, which only need to walk what requests allocate.
    Without it each full pass walked them all, about 100 ms with the event loop stopped, every half
    second or so under load: the API's whole p99 tail (measured in bench/, `identity` and
    `referrals`)."""
    gc.collect()
    gc.freeze()
