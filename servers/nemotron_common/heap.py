"""Keeping Python's cyclic garbage collector off the serving path."""

from __future__ import annotations

import gc


def freeze_loaded_objects() -> None:
    """Exempt every object that exists now from future garbage collections; call once loaded.

    Importing NeMo and torch and loading a model leaves 700-800 thousand objects tracked by the
    collector, and a full collection walks them all: 330-400 ms on a CI core, with the GIL held, so
    every thread of the process stops (an ASR step then stalls every stream). Those objects live
    as long as the process, so they need not be scanned again (``gc.freeze``); what serving
    creates later is still collected, and quickly.
    """
    gc.collect()  # what loading left as garbage is freed, not frozen
    gc.freeze()
