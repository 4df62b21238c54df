"""Durations as an admin reads them."""


def age_text(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``2 d``: how long, in the unit an admin reads at a glance."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"
