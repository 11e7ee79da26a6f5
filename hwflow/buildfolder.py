"""Build folders: claimed before the work, written atomically, checked against their digests
when used.

Writing (``hwflow compile``): :class:`BuildOutput` claims the output folder before the long
work starts. The name must be legal, an existing folder must be an hwflow build that can be
replaced, the parent folder must be writable, and no other hwflow may be writing the same
folder: a lock file ``.NAME.lock`` next to it is held with ``fcntl.flock`` from the claim to
the end, and a second run fails at once with one line instead of both reporting success for
one folder. Everything is staged in a hidden sibling ``.NAME.tmp-PID`` which replaces the
target only when complete, with a manifest (every file's sha256 and size) in the marker
``hwflow-build.json``; a killed run's leftovers are cleaned by the next run to the same folder.
A symlinked ``-o`` is followed: the build goes into the link's target and the link stays.

Reading (``hwflow sim``, ``predict``, ``bitstream``): :func:`open_build` checks the files of
the build against the manifest and refuses a damaged, missing or unrecorded file with one line
naming it and the command that rebuilds the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path, PurePosixPath

from hwflow.errors import HwflowError

__all__ = ["MARKER", "BuildOutput", "open_build", "build_kind", "compile_command", "is_build",
           "write_manifest", "write_json", "atomic_dir", "atomic_build_dir", "replace_dir"]

MARKER = "hwflow-build.json"
#: Version of the marker: 1 (hwflow before the manifest) recorded no file digests.
BUILD_FORMAT = 2

#: Files and top-level folders that ``sim``, ``predict``, ``eval`` and ``bitstream`` write into
#: a build after compile: never in the manifest, free to change.
LATER_FILES = ("reports/sim.json", "reports/predict.json", "reports/eval.json",
               "reports/timing.json", "reports/utilization.json")
LATER_DIRS = ("sim", "bitstream", "vitis", "vivado")

_GENERIC_REBUILD = "hwflow compile MODEL --board BOARD"
# A hidden sibling adds ".", "." and a tag of up to ~20 bytes to NAME; a legal NAME may already
# use all 255 bytes of NAME_MAX, so names over 100 bytes are cut to 64 plus a 12-digit hash.
_LONG_NAME = 100
_CUT_NAME = 64
_HASH_CHUNK = 1 << 20


def is_build(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


# -- writing ------------------------------------------------------------------------------

def compile_command(*args, boards_dir=None, **options) -> str:
    """The ``hwflow compile`` command line, shell-quoted, recorded in the marker so that a
    damaged build can say how to rebuild it.

    ``args`` come first (the model, or ``--example NAME``); ``options`` are flags by name
    (``max_context=64`` -> ``--max-context 64``): None and False are left out, True is a bare
    flag.
    """
    words = ["hwflow", *(["--boards-dir", str(boards_dir)] if boards_dir else []), "compile",
             *map(str, args)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(str(value))
    return shlex.join(words)


class BuildOutput:
    """An output folder, claimed for writing before the long work (a context manager).

    Parameters
    ----------
    out : path-like
        The folder as the user named it (``-o``); messages use this spelling.
    rebuild : str, optional
        The command that makes this build (:func:`compile_command`, without ``-o``); recorded
        in the marker for :func:`open_build`'s messages.
    build : bool
        An hwflow build folder (only a previous build or an empty folder may be replaced);
        False for a plain folder inside a build (``bitstream``'s vendor projects).

    Notes
    -----
    Entering claims the folder (raises :class:`HwflowError`, one line, before any work):
    checks the name, refuses to replace anything but a build, creates missing parent folders,
    takes the lock, cleans a killed run's ``.NAME.tmp-PID`` / ``.NAME.old-PID`` (PID dead),
    checks that a previous build can be removed, and creates the staging folder. Files are
    written in :meth:`writing`; leaving the ``with`` block without it (an error, Ctrl-C)
    removes the staging folder, the lock and any parent folder the claim created.
    """

    def __init__(self, out, rebuild: str | None = None, build: bool = True):
        self.out = Path(out)
        self.rebuild = rebuild
        self.build = build
        self.target: Path | None = None
        self.tmp: Path | None = None
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None
        self._made: list[Path] = []
        self._done = False

    def __enter__(self) -> BuildOutput:
        try:
            self._claim()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._release()
        return False

    def _claim(self) -> None:
        _check_name(self.out)                   # first: a stat of a too-long name fails
        self.target = _resolve(self.out)
        with _write_errors(self.out):
            if self.build:
                _refuse_other_folder(self.out, self.target)
            _make_parents(self.target.parent, self._made)
            self._lock_path = _sibling(self.target, "lock")
            self._lock_fd = _lock(self._lock_path, self.out)
            _clean_stale(self.target)
            _check_replaceable(self.out, self.target)
            self.tmp = _sibling(self.target, f"tmp-{os.getpid()}")
            self.tmp.mkdir()

    @contextlib.contextmanager
    def writing(self, info: dict | None = None):
        """Yield the staging folder; when the block ends, write the manifest (``info``: the
        marker's other fields; None: no marker) and move the folder into place. An OSError
        while writing (disk full, ...) becomes one line; the staging folder is removed."""
        with _write_errors(self.out):
            yield self.tmp
            if info is not None:
                write_manifest(self.tmp, {**info, "rebuild": self.rebuild})
            replace_dir(self.tmp, self.target)
        self._done = True

    def _release(self) -> None:
        if self.tmp is not None and not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            # unlinked while still held: a run that opened it meanwhile sees that the inode it
            # then locks is no longer the lock file and starts over (_lock)
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None
        if not self._done:
            for d in self._made:                  # deepest first; only if still empty
                with contextlib.suppress(OSError):
                    d.rmdir()


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a hidden staging folder that replaces the plain folder ``target`` when the block
    ends without error (and is removed when it raises)."""
    with BuildOutput(target, build=False) as claim, claim.writing() as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_build_dir(out: Path, info: dict | None = None, rebuild: str | None = None):
    """:class:`BuildOutput` claimed and written in one block (no work between the two)."""
    with BuildOutput(out, rebuild) as claim, claim.writing(info) as tmp:
        yield tmp


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing a previous ``dest``."""
    old = _sibling(dest, f"old-{os.getpid()}")
    had = dest.exists() or dest.is_symlink()
    if had:
        dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:
        if had:
            old.rename(dest)
        raise
    _remove(old)


def write_manifest(folder: Path, info: dict) -> None:
    """Write the marker of build folder ``folder``: ``info`` plus every file's sha256 and size
    (``files``, relative POSIX paths; :data:`LATER_FILES` and :data:`LATER_DIRS` left out) and
    ``files_sha256``, a digest of that table, so that a damaged marker is told apart."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MARKER and not _written_later(rel):
            files[rel] = {"sha256": _sha256(p), "size": p.stat().st_size}
    write_json(folder / MARKER, {**info, "hwflow_build": BUILD_FORMAT, "files": files,
                                 "files_sha256": _table_digest(files)})


def write_build(folder: Path, files: dict) -> None:
    """Write the files of a build folder: ``{relative path: content}``, content ``bytes``,
    ``str`` (text), a callable given the path (a writer of its own: an IR, a testbench folder)
    or anything else as JSON (:func:`write_json`). Parent folders are made.

    The one build writer of every model family: each compile says what its folder holds
    (``flow.build_files``, ``llm_flow.decoder_files``, ``llm_flow.shape_only_files``) and this
    writes it into the staging folder that :class:`BuildOutput` then moves into place.
    """
    folder = Path(folder)
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            write_json(path, content)


def write_json(path: Path, data) -> None:
    """Write JSON deterministically (sorted keys) and atomically (rename over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_plain) + "\n")
    tmp.replace(path)


def _plain(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# -- reading ------------------------------------------------------------------------------

def open_build(out, size_only=(), only=None) -> dict:
    """Check build folder ``out`` against the manifest written at compile; return its
    ``config.json``.

    Parameters
    ----------
    out : path-like
        The build folder.
    size_only : iterable of str
        Files the command does not read (e.g. ``predict``: ``memory_image.bin``): checked for
        presence and size only, not hashed.
    only : iterable of str, optional
        Check just these files (the CLI's look at ``config.json`` before a command).

    Raises
    ------
    HwflowError
        One line: not a build, a build made by an older hwflow (no digests), a damaged marker,
        or the first missing or damaged file (and how many more), with the rebuild command.
    """
    out = Path(out)
    marker = _read_marker(out)
    hint = _rebuild_hint(out, marker.get("rebuild"))
    size_only, only = set(size_only), None if only is None else set(only)
    problems = [p for rel, rec in sorted(marker["files"].items())
                if only is None or rel in only
                if (p := _check_file(out, rel, rec, rel in size_only))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HwflowError(f"{out}: {problems[0]}{more}; rebuild with {hint}")
    try:
        conf = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HwflowError(f"{out}: config.json cannot be read ({e}); rebuild with "
                          f"{hint}") from None
    if not isinstance(conf, dict):
        raise HwflowError(f"{out}: config.json is damaged (not a JSON object); rebuild with "
                          f"{hint}")
    return conf


def build_kind(out) -> str:
    """``"mlp"`` or ``"decoder"``: the kind of build folder ``out``, from its ``config.json``
    once that file is checked against the manifest (the rest is checked by the command)."""
    return open_build(out, only=("config.json",)).get("kind", "mlp")


def _read_marker(out: Path) -> dict:
    path = out / MARKER
    if not path.is_file():
        raise HwflowError(f"'{out}' is not an hwflow build folder (no {MARKER}); create one with "
                          f"`{_GENERIC_REBUILD} -o {shlex.quote(str(out))}`")
    damaged = (f"{out}: {MARKER} is damaged; rebuild with "
               f"{_rebuild_hint(out, None)}")
    try:
        marker = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise HwflowError(damaged) from None
    if not isinstance(marker, dict):
        raise HwflowError(damaged)
    version = marker.get("hwflow_build")
    if not isinstance(version, int) or version < BUILD_FORMAT or "files" not in marker:
        raise HwflowError(f"{out} was built by an older hwflow that recorded no file digests; "
                          f"recompile it with {_rebuild_hint(out, None)}")
    if version > BUILD_FORMAT:
        raise HwflowError(f"{out} was built by a newer hwflow (build format {version}, this one "
                          f"reads {BUILD_FORMAT}); upgrade hwflow or recompile it with "
                          f"{_rebuild_hint(out, None)}")
    files = marker["files"]
    if not (isinstance(files, dict) and all(_sane_entry(k, v) for k, v in files.items())
            and marker.get("files_sha256") == _table_digest(files)
            and isinstance(marker.get("rebuild"), str | None)):
        raise HwflowError(damaged)
    return marker


def _sane_entry(rel, rec) -> bool:
    """A manifest entry names a file inside the folder and holds a size and a sha256."""
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    return (p is not None and not p.is_absolute() and ".." not in p.parts and rel != ""
            and isinstance(rec, dict) and isinstance(rec.get("size"), int)
            and isinstance(rec.get("sha256"), str))


def _check_file(out: Path, rel: str, rec: dict, size_only: bool) -> str | None:
    """What is wrong with file ``rel`` of the build (None: it is as compile wrote it)."""
    p = out / rel
    try:
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != rec["size"]:
            return (f"{rel} is damaged ({size:,} B, {rec['size']:,} B recorded at compile)")
        if not size_only and _sha256(p) != rec["sha256"]:
            return f"{rel} is damaged (sha256 differs from the one recorded at compile)"
    except OSError as e:
        return f"{rel} cannot be read ({e.strerror or e})"
    return None


def _rebuild_hint(out: Path, rebuild) -> str:
    cmd = rebuild if isinstance(rebuild, str) and rebuild else _GENERIC_REBUILD
    return f"`{cmd} -o {shlex.quote(str(out))}`"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _table_digest(files) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _written_later(rel: str) -> bool:
    return rel in LATER_FILES or rel.split("/", 1)[0] in LATER_DIRS


# -- claiming the output folder -------------------------------------------------------------

def _resolve(out: Path) -> Path:
    """The folder to write: ``out`` made absolute; a symlink's existing target."""
    if out.is_symlink():
        real = Path(os.path.realpath(out))
        if not real.exists():
            raise HwflowError(f"-o '{out}' is a symbolic link to '{os.readlink(out)}', which "
                              "does not exist; create that folder or choose another -o")
        return real
    return Path(os.path.abspath(out))


def _check_name(out: Path) -> None:
    path = Path(os.path.abspath(out))
    limit = _name_max(path.parent)
    n = len(os.fsencode(path.name))
    if n > limit:
        raise HwflowError(f"-o '{out}': the folder name is {n} bytes long, the file system "
                          f"allows {limit}; choose a shorter name")


def _name_max(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _refuse_other_folder(out: Path, target: Path) -> None:
    if target.exists() and not (target.is_dir() and (is_build(target)
                                                     or not any(target.iterdir()))):
        link = f" (a link to '{target}')" if out.is_symlink() else ""
        raise HwflowError(f"'{out}'{link} exists and is not an hwflow build folder; "
                          "choose another output folder with -o")


def _make_parents(folder: Path, made: list[Path]) -> None:
    """Create ``folder`` and its missing parents, each put at the front of ``made`` as soon as
    it exists (deepest first: the order to remove them in, also after a failure midway)."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        made.insert(0, d)


def _lock(path: Path, out: Path) -> int:
    """Hold lock file ``path`` (``flock``, no waiting: a second compile to the same folder
    fails at once rather than replacing the first one's build after it reported success);
    returns its descriptor, which holds the PID of the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise HwflowError(f"another hwflow{who} is writing '{out}'; wait for it to finish "
                              "or choose another -o") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            return fd                       # a file system without flock: write unlocked
        # the previous holder removes the file when done: a lock on a removed inode is no lock
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _clean_stale(target: Path) -> None:
    """Remove what a killed run to ``target`` left (its PID is dead: under the lock no live
    hwflow writes there): ``.NAME.tmp-PID``, and ``.NAME.old-PID``, the previous build set
    aside, which is put back when ``target`` is missing (killed between the two renames)."""
    prefix = _sibling(target, "").name
    pattern = re.compile(re.escape(prefix) + r"(tmp|old)-(\d+)$")
    for p in sorted(target.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or (int(m[2]) != os.getpid() and _alive(int(m[2]))):
            continue
        if m[1] == "old" and not (target.exists() or target.is_symlink()) \
                and not p.is_symlink() and is_build(p):
            p.rename(target)
        else:
            _remove(p)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:             # someone else's process
        return True
    return True


def _check_replaceable(out: Path, target: Path) -> None:
    """A previous build at ``target`` must be removable, or its old copy would stay behind."""
    if not target.is_dir():
        return
    for d, _, _ in os.walk(target):
        if not os.access(d, os.W_OK | os.X_OK):
            raise HwflowError(f"'{out}' holds a build that cannot be replaced: '{d}' is not "
                              "writable; make it writable (chmod -R u+w) or choose another -o")


@contextlib.contextmanager
def _write_errors(out: Path):
    """OSErrors while claiming or writing ``out`` as one line (what failed, what to do)."""
    try:
        yield
    except OSError as e:
        what = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            todo = "free some space or choose another -o"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            todo = "choose a writable location with -o"
        elif e.errno == errno.ENAMETOOLONG:
            todo = "choose a shorter -o"
        else:
            todo = "choose another -o"
        raise HwflowError(f"cannot write '{out}': {what}; {todo}") from None


def _sibling(target: Path, tag: str) -> Path:
    """``.NAME.TAG`` next to ``target``, NAME cut to fit (see ``_LONG_NAME``)."""
    name = target.name
    raw = os.fsencode(name)
    if len(raw) > _LONG_NAME:
        name = f"{os.fsdecode(raw[:_CUT_NAME])}~{hashlib.sha256(raw).hexdigest()[:12]}"
    return target.with_name(f".{name}.{tag}")


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        with contextlib.suppress(OSError):
            p.unlink()
    elif p.exists():
        shutil.rmtree(p, ignore_errors=True)
