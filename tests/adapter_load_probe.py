"""Load adapter directories into a tiny LLaVA, one process for all, and report each load.

``tests/test_untrusted_adapter.py`` runs it on fuzzed adapters, so that the memory of a load is
measured apart from pytest's::

    python tests/adapter_load_probe.py HONEST_DIR FUZZED_DIR...

``HONEST_DIR`` is loaded first, twice, so that imports and allocator pools count in the
baseline. Prints one JSON object: ``{"loads": [...]}``, one entry per fuzzed directory, with
``error`` (the exception's type, or null when it loaded), ``message``, ``seconds`` and
``peak_growth_mib``, how far the process's peak resident memory has risen above the baseline
once that load is done.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from hf_cagul import CagulModel
from hf_cagul.tiny import tiny_vlm


def peak_mib() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(vlm: Any, directory: str) -> dict[str, Any]:
    """Load ``directory`` into ``vlm``: the outcome and how long it took."""
    start = time.perf_counter()
    try:
        CagulModel.from_pretrained(vlm, directory).unload()
        error, message = None, ""
    except Exception as err:
        error, message = type(err).__name__, str(err)
    return {"error": error, "message": message, "seconds": time.perf_counter() - start}


def main(honest: str, fuzzed: list[str]) -> None:
    """Print the report described in the module docstring."""
    vlm, _ = tiny_vlm("llava")
    for _ in range(2):
        assert load(vlm, honest)["error"] is None, "the honest adapter does not load"
    baseline = peak_mib()
    loads = []
    for directory in fuzzed:
        outcome = load(vlm, directory)
        loads.append({"directory": directory, **outcome, "peak_growth_mib": peak_mib() - baseline})
    print(json.dumps({"loads": loads}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
