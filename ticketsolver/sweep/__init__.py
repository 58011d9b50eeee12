"""Sweeps: one target built at every n for each setting, verified alike, tabulated and drawn.

Beside the pipeline, on top of it: a sweep calls :func:`ticketsolver.build_ticket` and
:func:`ticketsolver.verify` once per row of a :class:`SweepSpec` grid and writes results.csv and the figures of
the papers' experiments (error against n and against size, kept fraction, accuracy, conv error). The CLI
(``ticketsolver sweep``) and the service's sweep jobs are shells over :func:`run_sweep`.
"""

from __future__ import annotations

from ticketsolver.sweep.figures import FIGURES, write_figures
from ticketsolver.sweep.results import COLUMNS, RESULT_COLUMNS, VARYING_COLUMNS, read_rows, summary_table, write_rows
from ticketsolver.sweep.run import SweepProgress, SweepResult, describe, run_sweep
from ticketsolver.sweep.spec import SWEEP_VERIFY, SweepSpec, parse_n_range, row_label, setting_label

__all__ = [
    "COLUMNS",
    "FIGURES",
    "RESULT_COLUMNS",
    "SWEEP_VERIFY",
    "VARYING_COLUMNS",
    "SweepProgress",
    "SweepResult",
    "SweepSpec",
    "describe",
    "parse_n_range",
    "read_rows",
    "row_label",
    "run_sweep",
    "setting_label",
    "summary_table",
    "write_figures",
    "write_rows",
]
