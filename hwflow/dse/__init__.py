"""``hwflow dse``: design-space sweeps of a model on a board, resumable, local or on Dask.

The package, by the order of a sweep:

- :mod:`hwflow.dse.space`    the parameter space: its YAML file, validation and points;
- :mod:`hwflow.dse.evaluate` one point: the model loaded (once per process), the point's
  engine, its prediction and resources, its feasibility; the fit check of a whole space; the
  RTL verification of a Pareto point;
- :mod:`hwflow.dse.search`   the driver (:func:`~hwflow.dse.search.run_dse`): grid or
  NSGA-II through Optuna, local worker processes or Dask, the resumable SQLite study and
  the checks that keep the user's files safe;
- :mod:`hwflow.dse.report`   the Pareto set and what is written to the output folder (CSV,
  JSON, plots, summary.html).

The flow of one sweep (:func:`~hwflow.dse.search.run_dse`):

1. ``resolve``   the model (an MLP file / example, or a decoder config / folder / example),
                 the board and the space file (:mod:`hwflow.dse.space`), checked up front;
2. ``fit check`` every grid point's engine resources against the board, cheaply, so that a
                 space with no point that fits is one error line naming the shortfall;
3. ``search``    plain grid (every point, in the space's order) or Optuna NSGA-II (seeded),
                 through Optuna's ask-and-tell interface: the driver asks trials, hands the
                 evaluations (:func:`~hwflow.dse.evaluate.evaluate_point`) to local worker
                 processes or a Dask ``Client``, and tells each result the moment it
                 finishes, so every evaluated point is in the SQLite study at once;
4. ``outputs``   points.csv / points.json (all points), pareto.json (the feasible Pareto set),
                 PNG plots and summary.html, each written atomically, rebuilt from the study;
5. ``verify``    (``--verify K``) compile + RTL simulation of the best Pareto points that are
                 small enough, predicted vs simulated cycles.

Resume: re-running the same command on the same study continues it. A trial a killed driver
left RUNNING is told FAIL and its point evaluated again; a point with a stored result is
never evaluated again (NSGA-II proposing it a second time gets the stored result).

Nothing of the user's is written over: the output folder must be new, empty or marked as a
dse folder (:data:`~hwflow.dse.search.DSE_MARKER`), and the study a new file or an Optuna
database that hwflow created (its only study is :data:`~hwflow.dse.search.STUDY_NAME`, with
the sweep stored on it); both are checked before the first write. Local workers die with the
driver, even when it is killed.
"""

from hwflow.dse.evaluate import engine_overrides
from hwflow.dse.search import DSE_MARKER, RESULT_ATTR, STUDY_NAME, read_study_sweep, run_dse
from hwflow.dse.space import DECODER, MLP, parse_space

__all__ = ["DECODER", "DSE_MARKER", "MLP", "RESULT_ATTR", "STUDY_NAME", "engine_overrides",
           "parse_space", "read_study_sweep", "run_dse"]
