"""The one check every command makes before it continues work already in a folder.

A resumed run, or a second invocation writing into the same output folder, must produce
what one uninterrupted run would have; so everything it was started with must match, except
the settings listed as free to change (how long to run, how often to save or log, where to
report). Listing what *may* change, not what must match, is the safe polarity: an option
added later is protected without anyone remembering to add it to a list.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def resume_differences(saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Collection[str]) -> list[str]:
    """`key: old -> new` for every setting that differs and is not in `may_change`.

    Only keys both records hold are compared: a key missing from `saved` belongs to an option
    newer than the folder (the folder's own files, e.g. the images' metadata, still say how it
    was made), and one missing from `current` to an option since removed.
    """
    return [f"{key}: {saved[key]!r} -> {current[key]!r}"
            for key in sorted(saved.keys() & current.keys())
            if key not in may_change and saved[key] != current[key]]
