"""Writing one correction's output files, all or nothing.

``model.safetensors`` (the corrected checkpoint, its metadata pointing at its parent and at the
report), ``report.json``, ``report.html`` and ``weights.parquet`` (row, ε, effective weight 1 + ε
per training row) are written to temporary files in the output directory and renamed into place
only once every one was written, so a failure leaves no partial output.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.engine.io.checkpoint import file_sha256, save_checkpoint
from workers.engine.pipeline import CorrectionResult
from workers.reporting.page import render_html

__all__ = ["OUTPUT_FILES", "weights_table", "write_outputs"]

OUTPUT_FILES = ("model.safetensors", "report.json", "report.html", "weights.parquet")
OUTPUT_MODE = 0o644


def _staged(path: Path) -> Path:
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    os.chmod(tmp, OUTPUT_MODE)
    return Path(tmp)


def _column(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A contiguous 1-D array as an Arrow column without a copy. Not ``pa.array``: it imports
    pandas (about half a second) to check whether its argument is a pandas object."""
    return pa.Array.from_buffers(kind, values.shape[0], [None, pa.py_buffer(values)])


def weights_table(weights: np.ndarray) -> pa.Table:
    """The per-sample weights as a table: ``row`` (training row index), ``epsilon``, ``weight``."""
    effective = np.ascontiguousarray(weights, dtype=np.float64)
    return pa.table({
        "row": _column(np.arange(effective.shape[0], dtype=np.int64), pa.int64()),
        "epsilon": _column(effective - 1.0, pa.float64()),
        "weight": _column(effective, pa.float64()),
    })


def write_outputs(result: CorrectionResult, out_dir: Path) -> dict[str, Path]:
    """Write the four output files of ``result`` into ``out_dir``; returns their paths by name.

    The report records the corrected checkpoint's sha256 under
    ``provenance.corrected_model_sha256``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in OUTPUT_FILES}
    staged = {name: _staged(path) for name, path in paths.items()}
    try:
        save_checkpoint(result.state, staged["model.safetensors"], result.metadata)
        provenance = result.report.get("provenance")
        if isinstance(provenance, dict):
            provenance["corrected_model_sha256"] = file_sha256(staged["model.safetensors"])
        staged["report.json"].write_text(json.dumps(result.report, indent=2, allow_nan=False),
                                         encoding="utf-8")
        staged["report.html"].write_text(render_html(result.report), encoding="utf-8")
        pq.write_table(weights_table(result.weights), staged["weights.parquet"])
        for name, path in paths.items():
            os.replace(staged[name], path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return paths
