"""The sweep driver: :func:`run_dse` and its search, workers and study.

The search asks Optuna for trials (grid: every point, enqueued in order; NSGA-II: seeded),
hands the points to workers (in the driver, local spawned processes that die with it, or a
Dask ``Client``) and tells each result the moment it finishes, into a resumable SQLite
study. The output folder and the study are checked to be hwflow dse's own before the first
write (:func:`check_out_folder`, :func:`read_study_sweep`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import json
import math
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from hwflow.boards import load_board
from hwflow.dse.evaluate import (
    _load_decoder,
    _load_mlp,
    check_space_fits,
    evaluate_points,
    point_feasibility,
    resolve_model,
    verify_points,
)
from hwflow.dse.report import _atomic_write, write_outputs
from hwflow.dse.space import MLP, Space, load_space
from hwflow.errors import HwflowError

STUDY_NAME = "hwflow-dse"
#: The file that marks an output folder as hwflow dse's own: only such a folder (or a new or
#: empty one) is written into.
DSE_MARKER = "hwflow-dse.json"
#: What a dse folder holds (beside the plots, ``throughput_vs_*.png``): a folder of only these
#: and an hwflow study, from before the marker existed, is taken as a dse folder too.
DSE_OUTPUTS = ("points.csv", "points.json", "pareto.json", "summary.html", "verify.json",
               "verify", "study.db", "study.db-wal", "study.db-shm", "study.db-journal")
#: The tables (and schema version table) of an Optuna RDB storage.
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes",
    "trials", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_user_attributes", "trial_system_attributes", "trial_heartbeats", "version_info",
    "alembic_version"})
SQLITE_MAGIC = b"SQLite format 3\x00"
#: The longest database path SQLite opens, in bytes once made absolute (its 512-byte path
#: limit, less the room it keeps for a "-journal" suffix).
SQLITE_MAX_PATH = 504
#: Result of a point, stored as this trial user attribute (a JSON-able dict).
RESULT_ATTR = "dse_result"


# ------------------------------------------------------------------------------- driver

SAMPLERS = ("grid", "nsga2")
#: NSGA-II seeds numpy's legacy generator, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _check_options(sampler, jobs, trials, verify, seed) -> None:
    """One error line for an option out of range, before anything is loaded."""
    if sampler not in SAMPLERS:
        raise HwflowError(f"--sampler {sampler}: use {' or '.join(SAMPLERS)}")
    for flag, v, least in (("--jobs", jobs, 1), ("--trials", trials, 1),
                           ("--verify", verify, 0)):
        if v is not None and v < least:
            raise HwflowError(f"{flag} {v}: must be >= {least}")
    if sampler == "nsga2" and not 0 <= seed <= MAX_SEED:
        raise HwflowError(f"--seed {seed}: must be between 0 and {MAX_SEED}")


def run_dse(model=None, example=None, board="u280", space=None, *, trials=None, jobs=2,
            study=None, scheduler=None, out=None, sampler="grid", seed=0, verify=0,
            trust_model=False, boards_dir=None, progress=True) -> dict:
    """Run (or resume) a sweep and write its outputs; returns a summary dict.

    Parameters
    ----------
    model, example : str
        The model (see :func:`resolve_model`).
    board : str
    space : path
        The space file (:mod:`hwflow.dse.space`).
    trials : int, optional
        Grid: evaluate only the first ``trials`` points; NSGA-II: distinct points to evaluate
        (default 100, at most the space's size).
    jobs : int
        Local worker processes (1: in the driver), or the least number of points in flight
        on a Dask cluster.
    study : path, optional
        SQLite study (default ``OUT/study.db``); the same study resumes the sweep. A new file,
        or a study hwflow created: any other file is refused and left unchanged.
    scheduler : str or distributed.Client, optional
        Dask scheduler address (or a Client) instead of local workers.
    out : path, optional
        Output folder (default ``build/dse-<model>-<board>``): new, empty or a dse folder
        (marked by :data:`DSE_MARKER`); any other is refused.
    sampler : str
        ``grid`` or ``nsga2``.
    seed : int
        NSGA-II seed.
    verify : int
        Compile + simulate in RTL this many Pareto points (the small enough ones).
    """
    _check_options(sampler, jobs, trials, verify, seed)
    if space is None:
        raise HwflowError("--space FILE is required (see README, 'Design-space sweeps')")
    spec = resolve_model(model, example, trust_model)
    brd = load_board(board, boards_dir)
    sp = load_space(space, spec["kind"])
    fit = check_space_fits(sp, brd, spec["kind"])
    out = Path(out) if out else Path("build") / f"dse-{spec['name']}-{brd.name}"
    study_path = Path(study) if study else out / "study.db"
    sweep = {"model": spec["name"], "kind": spec["kind"], "board": brd.name,
             "space": sp.to_dict(), "sampler": sampler,
             **({"seed": seed} if sampler == "nsga2" else {})}
    # refusals before any write or long work: someone else's folder or database, a study of
    # another sweep, then a model that does not load (one error line, not N failed points)
    with _write_faults("choose another output folder with -o (or study file with --study)"):
        check_out_folder(out)
        stored = read_study_sweep(study_path)
        if stored is not None:
            check_same_sweep(study_path, stored, sweep)
    if spec["kind"] == MLP:
        _load_mlp(spec)
    else:
        _load_decoder(spec)

    import optuna

    if sampler == "nsga2":
        pop = max(4, min(50, (trials or 100) // 4))
        smp = optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    else:
        smp = optuna.samplers.RandomSampler(seed=seed)   # never used: every grid point is enqueued
    task_base = {"model": spec, "board": brd.name,
                 "boards_dir": str(boards_dir) if boards_dir else None}
    # a cluster is connected to before the first write: an unreachable one leaves nothing
    if scheduler is not None:
        ex = _DaskExecutor(scheduler, jobs, spec)
    elif jobs == 1:
        ex = _InlineExecutor()
    else:
        ex = _LocalExecutor(jobs, spec)
    directions = ["maximize" if d == "max" else "minimize" for d in sp.objectives.values()]
    resume = "the points finished so far are in the study: run the same command again to resume"
    t0 = time.perf_counter()
    aborted = True
    try:
        _prepare_outputs(out, study_path, directions, sweep,
                         {"hwflow": "dse", "model": spec["name"], "board": brd.name,
                          "study": str(study_path)})
        with _write_faults(resume):
            st = _open_study(study_path, smp, sweep)
            counts = run_search(st, sp, task_base, ex, sampler_name=sampler, trials=trials,
                                progress=progress)
        aborted = False
    finally:
        ex.close(abort=aborted)
    wall = time.perf_counter() - t0
    info = {"model": spec["name"], "kind": spec["kind"], "board": brd.name, "sampler": sampler,
            "study": str(study_path), "space_file": str(space)}
    with _write_faults(resume):
        results = study_results(st)
        w = write_outputs(out, results, sp, info)
        ver = None
        if verify:
            ver = verify_points(w["pareto"], verify, spec, brd.name, boards_dir, out)
            w = write_outputs(out, results, sp, info, ver)
    return {"out": out, "wall_s": wall, "search": counts, "fit_check": fit, **w,
            "verify": ver, "info": info, "space_size": sp.size}


# ---------------------------------------------------------------------------- executors

def _warm(spec):
    """Load the model once, before the first point."""
    try:
        (_load_mlp if spec["kind"] == MLP else _load_decoder)(spec)
    except Exception:  # noqa: BLE001 - the points report the failure themselves
        pass


#: ``prctl`` option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: How often a worker's watchdog checks that its driver is alive (seconds).
_WATCHDOG_S = 1.0


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when the driver ``parent`` dies, however it dies.

    A worker blocks on its task queue, whose pipe it holds both ends of, so a driver killed
    by ``kill -9`` never wakes it: it would stay, holding its model (hundreds of MB), for
    good. On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); a
    watchdog thread polling the parent's pid covers the other systems. The driver may
    already be gone before either is set up: then the parent is no longer ``parent``.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="hwflow-dse-watchdog",
                     daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCHDOG_S)
    os._exit(1)


def _worker_init(spec, parent: int) -> None:
    """Local worker initializer: die with the driver, leave Ctrl-C to the driver (which
    stops the workers; a KeyboardInterrupt here would print a traceback per worker), and
    load the model once."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm(spec)


class _InlineExecutor:
    """``--jobs 1``: evaluate in the driver process (no worker start-up)."""

    def submit(self, fn, arg):
        f = cf.Future()
        f.set_result(fn(arg))
        return f

    def wait_any(self, futures):
        return [next(iter(futures))]

    @property
    def slots(self):
        return 1

    def close(self, abort=False):
        pass


class _LocalExecutor:
    """Local worker processes (spawned: the driver holds an SQLite connection and maybe
    torch's threads, neither of which survives a fork well)."""

    def __init__(self, jobs: int, spec: dict):
        import multiprocessing as mp

        self._pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                            initializer=_worker_init,
                                            initargs=(spec, os.getpid()))
        self.slots = jobs

    def submit(self, fn, arg):
        return self._pool.submit(fn, arg)

    def wait_any(self, futures):
        return list(cf.wait(list(futures), return_when=cf.FIRST_COMPLETED).done)

    def close(self, abort=False):
        """Stop the workers; ``abort`` (an error or Ctrl-C) kills them at once rather than
        letting them finish points nobody will tell (a decoder point may take a minute)."""
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        if abort:
            for proc in procs:
                with contextlib.suppress(OSError):
                    proc.kill()


class _DaskExecutor:
    """A Dask distributed ``Client`` at ``address`` (its workers need the model's path)."""

    def __init__(self, address, jobs: int, spec: dict):
        from distributed import Client

        try:
            self._client = address if hasattr(address, "submit") else Client(address,
                                                                             timeout="20s")
        except (OSError, ValueError, TypeError) as e:   # unreachable, or no address at all
            raise HwflowError(f"--scheduler {address}: cannot connect ({e})") from None
        self._own = not hasattr(address, "submit")
        threads = sum(self._client.nthreads().values()) or 1
        self.slots = max(jobs, threads)

    def submit(self, fn, arg):
        return self._client.submit(fn, arg, pure=False)

    def wait_any(self, futures):
        from distributed import wait

        return list(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self, abort=False):
        if self._own:
            self._client.close()


# ------------------------------------------------------------------------------ search

def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _objective_values(result: dict, space: Space) -> list:
    vals = []
    for name in space.objectives:
        v = float(result["metrics"].get(name, math.nan))
        vals.append(v if math.isfinite(v) else 1e300)
    return vals


def _sqlite_connect(path: str):
    """The study's SQLite connection: write-ahead log, and ``synchronous=NORMAL`` so that a
    commit is not an fsync. Optuna commits about 15 times per point (ask, each parameter,
    constraints, result, tell); at ~10 ms per fsync that was 0.15 s per point, several times
    an MLP point's evaluation. A committed point still survives the driver being killed
    (``kill -9``: the log is in the OS's cache and is replayed on the next open); only a
    power loss may drop the last few points, which the resume then evaluates again."""
    import sqlite3

    con = sqlite3.connect(path, timeout=60, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def _open_study(path: Path, sampler, sweep: dict):
    """Open the study at ``path`` (an hwflow study: :func:`_prepare_outputs` created or
    checked it) for the sweep ``sweep``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={
        "creator": functools.partial(_sqlite_connect, str(path))})
    study = optuna.load_study(storage=storage, study_name=STUDY_NAME, sampler=sampler)
    check_same_sweep(path, study.user_attrs.get("sweep"), sweep)
    return study


# ------------------------------------------------------- output folder and study: ours only

def check_out_folder(out: Path) -> None:
    """Refuse an output folder that hwflow dse did not create (nothing is written yet).

    ``out`` may be absent, an empty folder, or a dse folder: one holding :data:`DSE_MARKER`,
    or, from before the marker, only dse outputs (:data:`DSE_OUTPUTS`) beside an hwflow
    study. Anything else (a user's folder, a compile build, a file) is refused, so that no
    file of the user's is written over.
    """
    if out.is_symlink() and not out.exists():
        raise HwflowError(f"-o '{out}' is a dangling symbolic link; choose another output "
                          f"folder with -o")
    if not out.exists():
        return
    if not out.is_dir():
        raise HwflowError(f"-o '{out}' is a file, not a folder; choose another output folder "
                          f"with -o")
    if (out / DSE_MARKER).is_file() or not any(out.iterdir()) or _is_unmarked_dse_folder(out):
        return
    raise HwflowError(f"'{out}' exists and is not an hwflow dse folder (no {DSE_MARKER}); "
                      f"choose another output folder with -o")


def _is_unmarked_dse_folder(out: Path) -> bool:
    """A folder an earlier hwflow (without the marker) wrote: only dse outputs and hidden
    temporaries, and an hwflow study as ``study.db``."""
    for p in out.iterdir():
        n = p.name
        if not (n in DSE_OUTPUTS or (n.startswith("throughput_vs_") and n.endswith(".png"))
                or (n.startswith(".") and ".tmp-" in n)):
            return False
    try:
        return read_study_sweep(out / "study.db") is not None
    except HwflowError:
        return False


def read_study_sweep(path: Path) -> dict | None:
    """The sweep stored in the study file ``path``; None when there is no file yet (a new
    study is created there). Reads without writing anything (SQLite's ``immutable`` mode).

    Raises
    ------
    HwflowError
        ``path`` is not a file hwflow created: not an SQLite database, a database holding
        tables other than Optuna's, or an Optuna storage without hwflow's study (exactly one
        study, :data:`STUDY_NAME`, carrying its ``sweep``).
    """
    n = len(os.fsencode(os.path.abspath(path)))
    if n > SQLITE_MAX_PATH:
        raise HwflowError(f"study '{path}': its full path is {n} bytes, longer than SQLite "
                          f"opens ({SQLITE_MAX_PATH}); choose a shorter --study or -o")
    if path.is_symlink() and not path.exists():
        raise HwflowError(f"study '{path}' is a dangling symbolic link; choose another study "
                          f"file with --study")
    if not path.exists():
        return None
    if not path.is_file():
        raise HwflowError(f"study '{path}' is not a file; choose another study file with "
                          f"--study")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise HwflowError(f"study '{path}' is not an SQLite database (hwflow leaves it "
                          f"unchanged); choose a new study file with --study")
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            return _hwflow_sweep(con, path)
        finally:
            con.close()
    except sqlite3.Error as e:
        raise HwflowError(f"study '{path}' cannot be read as an SQLite database ({e}); choose "
                          f"a new study file with --study") from None


def _hwflow_sweep(con, path: Path) -> dict:
    """The sweep of an open study database; raises :class:`HwflowError` if it is not
    hwflow's."""
    names = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type IN "
                                       "('table', 'view', 'trigger')")}
    foreign = sorted(n for n in names - OPTUNA_TABLES if not n.startswith("sqlite_"))
    if foreign:
        raise HwflowError(f"study '{path}' is an SQLite database that hwflow did not create "
                          f"(it holds '{foreign[0]}'), and hwflow adds no tables to it; "
                          f"choose a new study file with --study")
    studies, sweep = [], []
    if {"studies", "study_user_attributes"} <= names:
        studies = con.execute("SELECT study_id, study_name FROM studies").fetchall()
        if len(studies) == 1:
            sweep = con.execute("SELECT value_json FROM study_user_attributes WHERE study_id = "
                                "? AND key = 'sweep'", (studies[0][0],)).fetchall()
    if [n for _, n in studies] != [STUDY_NAME] or len(sweep) != 1:
        raise HwflowError(f"study '{path}' is a database that hwflow dse did not create (no "
                          f"'{STUDY_NAME}' study of its own); choose a new study file with "
                          f"--study")
    try:
        return json.loads(sweep[0][0])
    except ValueError:
        raise HwflowError(f"study '{path}': its stored sweep is damaged; choose a new study "
                          f"file with --study") from None


def check_same_sweep(path: Path, stored, sweep: dict) -> None:
    """Refuse to resume a study of another sweep (model, board, space, sampler or seed)."""
    want = json.loads(json.dumps(sweep))
    if stored == want:
        return
    stored = stored if isinstance(stored, dict) else {}
    diff = [k for k in want if stored.get(k) != want[k]] or ["settings"]
    raise HwflowError(f"study '{path}' holds another sweep (its {', '.join(diff)} differ); "
                      f"use another --study or -o")


def _prepare_outputs(out: Path, study_path: Path, directions: list, sweep: dict,
                     marker: dict) -> None:
    """The sweep's first writes, after every check: the output folder and its marker, and
    the study if it is new. Fails early, as one line, where a folder cannot be written."""
    with _write_faults("choose another output folder with -o (or study file with --study)"):
        out.mkdir(parents=True, exist_ok=True)
        if not (out / DSE_MARKER).is_file():
            _atomic_write(out / DSE_MARKER, json.dumps(marker, indent=1, sort_keys=True) + "\n")
        _remove_stale_temporaries(out)
        if not study_path.exists():
            _create_study_file(study_path, directions, sweep)
    # a file another process put there first is held to the same rule
    check_same_sweep(study_path, read_study_sweep(study_path), sweep)


def _create_study_file(path: Path, directions: list, sweep: dict) -> None:
    """A new study at ``path``, complete with hwflow's mark (the study and its sweep) before
    it appears there: built in a hidden sibling file and linked into place. So a file at
    ``path`` is a whole hwflow study or not hwflow's, never a half-made one that a resume
    could not tell from a user's database; and a file that appeared meanwhile is kept."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name[:100]}.tmp-{os.getpid()}"   # a long name stays legal
    tmp.unlink(missing_ok=True)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
        try:
            study = optuna.create_study(storage=storage, study_name=STUDY_NAME,
                                        directions=directions)
            study.set_user_attr("sweep", sweep)
        finally:
            storage.engine.dispose()
        try:
            os.link(tmp, path)         # unlike a rename, never replaces an existing file
        except FileExistsError:
            pass
        except OSError:                # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the hidden ``.NAME.tmp-PID`` files that killed runs left in the dse folder
    ``folder`` (their PID is gone)."""
    for p in folder.glob(".*.tmp-*"):
        pid = p.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not _pid_alive(int(pid)) and p.is_file():
            p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                    # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def _write_faults(hint: str):
    """Turn a failed write (an unwritable folder, a full disk, a database error) into one
    error line ending with ``hint``."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    try:
        yield
    except OSError as e:
        where = f" '{e.filename}'" if e.filename else ""
        raise HwflowError(f"cannot write{where}: {e.strerror or e}; {hint}") from None
    except (sqlite3.Error, sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as e:
        why = (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise HwflowError(f"the study cannot be written ({why}); {hint}") from None


def _recover(study, space: Space) -> tuple:
    """Resume: results stored so far by point key, and the points of trials a killed driver
    left RUNNING or WAITING (told FAIL, to be evaluated again unless a result is stored)."""
    from optuna.trial import TrialState

    done, redo = {}, []
    for t in study.get_trials(deepcopy=False):
        r = t.user_attrs.get(RESULT_ATTR)
        if t.state == TrialState.RUNNING:
            if r is not None:          # killed between storing the result and telling it
                _tell(study, t.number, r, space)
            else:
                study.tell(t.number, state=TrialState.FAIL)
                redo.append(dict(t.params))
        elif t.state == TrialState.WAITING:
            redo.append(dict(t.system_attrs.get("fixed_params", {})))
        if r is not None:
            done.setdefault(_key(r["params"]), r)
    while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        t = study.ask()                # pop enqueued-never-asked trials; redone below
        study.tell(t, state=TrialState.FAIL)
    redo = [p for p in redo if p and _key(p) not in done]
    return done, list({_key(p): p for p in redo}.values())


def _tell(study, trial, result: dict, space: Space, store: bool = True):
    """Record ``result`` on ``trial`` (a Trial, or a trial number when resuming) and tell
    it: NSGA-II's constraint values (``<= 0`` met: the board fit, then the space's
    constraints), the result itself (unless ``store`` is off: a duplicate proposal), then
    the objective values (FAIL for a point with no metrics)."""
    import optuna
    from optuna.trial import TrialState

    if isinstance(trial, int):
        trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, trial))
    have = study._storage.get_trial_system_attrs(trial._trial_id)
    for i, v in enumerate(point_feasibility(result, space)[1]):
        if not any(k.endswith(f":c{i}") for k in have):
            trial.set_constraint(f"c{i}", v)
    if store:
        trial.set_user_attr(RESULT_ATTR, result)
    if result["status"] != "ok":
        return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    return study.tell(trial, _objective_values(result, space), skip_if_finished=True)


def _ask(study, space: Space, params: dict | None):
    """Ask a trial; with ``params``, that exact point (enqueued first)."""
    if params is not None:
        study.enqueue_trial(params, skip_if_exists=False)
    trial = study.ask()
    return trial, {n: trial.suggest_categorical(n, v) for n, v in space.parameters.items()}


def _clock_groups(points: list) -> list:
    """Consecutive points that differ only in ``clock_mhz``, as lists (the grid varies its
    last parameter fastest, so a space that lists clock_mhz last groups them all)."""
    groups: list = []
    for p in points:
        base = _key({k: v for k, v in p.items() if k != "clock_mhz"})
        if groups and groups[-1][0] == base:
            groups[-1][1].append(p)
        else:
            groups.append((base, [p]))
    return [g for _, g in groups]


def run_search(study, space: Space, task_base: dict, executor, *, sampler_name: str,
               trials: int | None, progress: bool = True) -> dict:
    """Ask, evaluate and tell until the sweep is complete; returns the counts.

    Grid: the points not in the study, in order, a group of clock variants per worker call;
    NSGA-II: the points a killed run left, then one asked point per worker call until
    ``trials`` distinct points are stored. Each result is told as its call finishes."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    done, redo = _recover(study, space)
    counts = {"resumed": len(done), "evaluated": 0, "duplicates": 0, "retried": len(redo)}
    if sampler_name == "grid":
        limit = space.size if trials is None else min(trials, space.size)
        source = iter(_clock_groups([p for i, p in space.points()
                                     if i < limit and _key(p) not in done]))
    else:
        limit = min(trials or 100, space.size)
        source = iter([[p] for p in redo])

    inflight: dict = {}          # future -> [(trial, key)]
    bar = tqdm(total=limit, initial=min(len(done), limit), unit="pt", desc="dse",
               disable=None if progress else True, dynamic_ncols=True)
    asks_without_new = 0
    try:
        while True:
            while len(inflight) < executor.slots:
                group = next(source, None)
                if group is None and sampler_name == "grid":
                    break
                if group is None:
                    running = sum(len(v) for v in inflight.values())
                    if len(done) + running >= limit or asks_without_new > 50 * limit:
                        break
                    trial, params = _ask(study, space, None)
                    key = _key(params)
                    if key in done:         # proposed again: the stored result, no evaluation
                        trial.set_user_attr("dse_duplicate_of", done[key]["point_id"])
                        _tell(study, trial, done[key], space, store=False)
                        counts["duplicates"] += 1
                        asks_without_new += 1
                        continue
                    if any(k == key for v in inflight.values() for _, k in v):
                        study.tell(trial, state=TrialState.FAIL)
                        asks_without_new += 1
                        continue
                    asks_without_new = 0
                    asked = [(trial, params)]
                else:
                    asked = [_ask(study, space, params) for params in group]
                tasks = [{**task_base, "params": params, "point_id": space.point_id(params)}
                         for _, params in asked]
                fut = executor.submit(evaluate_points, tasks)
                inflight[fut] = [(trial, _key(params)) for trial, params in asked]
            if not inflight:
                break
            for fut in executor.wait_any(inflight):
                asked = inflight.pop(fut)
                try:
                    results = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker died (OOM, cluster loss)
                    raise HwflowError(f"a worker failed ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:120] if str(e) else ''}); "
                                      f"the points finished so far are in the study: run "
                                      f"the same command again to resume") from None
                for (trial, key), result in zip(asked, results, strict=True):
                    _tell(study, trial, result, space)
                    done[key] = result
                    counts["evaluated"] += 1
                    bar.update(1)
    finally:
        bar.close()
    counts["points"] = len(done)
    return counts


def study_results(study) -> list:
    """Every stored point result, one per point, in point order."""
    by_id = {}
    for t in study.get_trials(deepcopy=False):
        r = t.user_attrs.get(RESULT_ATTR)
        if r is not None:
            by_id.setdefault(r["point_id"], r)
    return [by_id[k] for k in sorted(by_id)]
