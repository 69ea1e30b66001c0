"""Atomic file writes: a file appears under its final name whole or not at all.

Every output the package writes (results, reports, figures, manifests, heatmaps, checkpoints, ONNX exports, cache
indexes) goes through :func:`write_atomic` (:func:`write_csv` for a table), and a bundle is built as a folder
beside its final name (:func:`building`): the data lands in a temporary file in the same folder, is flushed to disk, and
is renamed over the final name; the folder is then flushed too, so the rename survives a power cut. A full disk or a
crash mid-write leaves the previous file (or none) under the final name, never a truncated one.

A results file that a run replaces is first checked to be the one that was there when the run began
(:func:`write_unchanged`): of two runs given one file, the one that finished first would otherwise lose its results
without a word. Results that no file takes are said to be so (:class:`NotWritten`), for the caller to keep elsewhere.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .files import NotRegularFile
from .names import file_kind, json_text

Writer = Callable[[Path], object]


def _fsync_path(path: Path | str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes | Writer, exclusive: bool = False, mode: int | None = None) -> Path:
    """Write ``data`` (bytes, or a function that writes a file at the path it is given) to ``path`` atomically.

    ``exclusive``: never replace an existing file; raises FileExistsError instead (the new file is linked in, which
    fails when the name exists). Any error removes the temporary file and leaves ``path`` as it was. ``mode``: the
    file's permissions from the start (a private file is never readable by others, not even for a moment); None: a
    file that replaces another keeps its permissions (:func:`_mode_for`).
    """
    path = Path(path)
    refuse_special(path)
    mode = _mode_for(path) if mode is None else mode
    # the temporary file's name is the final one's cut to 200 bytes: a name near the 255 bytes a folder takes would
    # otherwise fail for the 14 the temporary adds, once the run's work is done
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{os.fsdecode(os.fsencode(path.name)[:200])}.", suffix=".tmp")
    tmp = Path(name)
    try:
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
                f.flush()
                os.fsync(f.fileno())
        else:
            os.close(fd)
            data(tmp)
            os.chmod(tmp, mode)  # after the writer, which may have made a new file (safetensors does: mode 0600)
            _fsync_path(tmp)
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as e:
        if e.errno is None:
            raise
        # the message names the file meant, not the temporary one (or none at all: a full disk)
        raise type(e)(e.errno, e.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent, directory=True)
    return path


def write_json(path: Path | str, tree: object) -> Path:
    """A JSON results file, written atomically as :func:`names.json_text` writes every one: indented, every string
    valid UTF-8, and a NaN or infinity refused (``metrics.jsonable`` makes them null first where a figure may be
    undefined)."""
    return write_atomic(path, json_text(tree).encode())


def write_csv(path: Path | str, fields: Sequence[str], rows: Iterable[Mapping[str, object]],
              errors: str = "strict") -> Path:
    """A CSV with a header row and one row per mapping, written atomically; ``errors``: how characters UTF-8
    cannot encode are written (``surrogateescape`` round-trips file names that are not UTF-8)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, text.getvalue().encode("utf-8", errors))


def write_new(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """``folder/stem+suffix``, or ``stem-2+suffix``, ... when that name exists: a per-film output (heatmap, report)
    never replaces a file, which may be an input film of the same name or another film's output (films of one name
    come from different folders), and it appears whole or not at all (:func:`write_atomic`)."""
    n = 1
    while True:
        path = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            return write_atomic(path, data, exclusive=True)
        except FileExistsError:
            n += 1


def file_stamp(path: str | Path) -> str | None:
    """What changes when the file at ``path`` does: its size, its modification and status-change times (a
    rewrite, another file put there by copy or rename, a chmod) and its inode (another file put there by rename,
    which file systems with times in whole seconds, or none for status changes, would not show within a second);
    None when it cannot be stat'ed. The image cache is keyed on it, ``predict`` checks by it that its reads of a
    film were all of one file, and a results file is replaced only while it is the one a run found when it began
    (:func:`unchanged`). The device is left out: a network file system's differs between the machines sharing it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


# A stamp's times are trusted only once they are this far older than what was read by it: a file rewritten in place
# within the file system's time granularity (whole seconds on some), at the same size, keeps its stamp ("racy git")
SETTLED_NS = 2_000_000_000


def stamp_settled(stamp: str, read_ns: int) -> bool:
    """Whether :func:`file_stamp` ``stamp`` tells what was read by it from ``read_ns`` on (``time.time_ns``, taken
    before the stamp): its times are well before that read, so any later write gives other times. What a process
    keeps of a file it read (the copy search's scans, the decoders' versions under a folder) is reused only then."""
    _, mtime, ctime, _ = stamp.split(":")
    return max(int(mtime), int(ctime)) < read_ns - SETTLED_NS


@contextmanager
def unchanged(path: Path | str, stamp: str | None) -> Iterator[None]:
    """Run the block, which writes ``path`` (and its folder's other outputs), only if ``path`` is still the file
    ``stamp`` (:func:`file_stamp`) found, or is gone; otherwise FileExistsError says that another writer changed it
    and that it was left as it is. The folder, made if missing, is locked (flock) for the check and the block, so
    that of two runs that take the lock one writes and the other finds its file changed."""
    path = Path(path)
    with locked(path.parent):
        now = file_stamp(path)
        if now is not None and now != stamp:
            raise _changed(path, appeared=stamp is None)
        yield


@contextmanager
def locked(folder: Path | str) -> Iterator[None]:
    """Run the block holding ``folder``'s lock (flock; the folder made if missing), which every writer of its
    shared files takes: :func:`unchanged`'s results, the copy search's scans. On a file system without locks (some
    network ones) the block runs unlocked."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _changed(path: Path, appeared: bool) -> FileExistsError:
    return FileExistsError(f"{path} {'appeared' if appeared else 'changed'} while this run was working (another "
                           "run's results?): nothing was written over it")


class NotWritten(OSError):
    """No file took a run's results (:func:`write_unchanged`); the message says why, each failure. The caller puts
    them where they are not lost (the command line: stdout), as a run of hours would otherwise be gone."""


def write_unchanged(path: Path | str, data: bytes, stamp: str | None) -> Path:
    """:func:`write_atomic` of a results file that replaces only the file ``stamp`` found when the run began
    (:func:`unchanged`). When another writer changed it since, ``data`` goes under a new name beside it
    (:func:`write_new`) and FileExistsError says where: the other results stay, and this run's are not lost. So too
    when its folder, made now (once the run's work is done), cannot be: a file took its name meanwhile; ``data``
    goes under a new name to the nearest folder above it, and OSError says where. When no file takes ``data`` (the
    file's write fails: a full disk, a fault; or the new name's does too), :class:`NotWritten` says why."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        nearest = next(folder for folder in path.parents if folder.is_dir())  # the root, at the last
        failed = f"the folder {path.parent} cannot be made ({e.strerror or e})"
        kept = _write_new_or_say(nearest, path, data, failed)
        raise OSError(f"{failed}: this run's results are in {kept}") from e
    try:
        with unchanged(path, stamp):
            # exclusive where the name is free: a file a writer without the lock puts there now is kept too
            return write_atomic(path, data, exclusive=file_stamp(path) is None)
    except FileExistsError as e:  # unchanged's, or write_atomic's (errno EEXIST) for a file put there just now
        reason = e if e.errno is None else _changed(path, appeared=True)
    except OSError as e:  # a new name would fail as this one did (a full disk, a fault): none is tried
        raise NotWritten(f"{path} cannot be written ({e.strerror or e})") from e
    kept = _write_new_or_say(path.parent, path, data, str(reason))
    raise FileExistsError(f"{reason}; this run's results are in {kept}")


def _write_new_or_say(folder: Path, path: Path, data: bytes, failed: str) -> Path:
    """:func:`write_new` of ``path``'s results in ``folder``, ``path`` having failed as ``failed`` says; when that
    fails too, :class:`NotWritten` says both."""
    try:
        return write_new(folder, path.stem, path.suffix, data)
    except OSError as e:
        raise NotWritten(f"{failed}; nor can a new file in {folder} be written ({e.strerror or e})") from e


@contextmanager
def building(folder: Path | str) -> Iterator[Path]:
    """A temporary folder path beside ``folder`` (the caller creates it) that takes ``folder``'s name only when the
    block ends without an error: a bundle is whole under its name or absent, never half written. A folder already
    under the name is moved aside first and deleted after, so at no moment is a half one there; a failed block
    leaves the old one as it was. What a killed build of the same folder left beside it is cleared first
    (:func:`_clear_leftovers`)."""
    folder = Path(folder)
    _clear_leftovers(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        yield tmp
        if folder.exists():
            os.rename(folder, aside)
        try:
            os.rename(tmp, folder)
        except BaseException:  # the new one could not take the name (or the user stopped it): the old one takes it back
            if aside.exists() and not folder.exists():
                os.rename(aside, folder)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clear_leftovers(folder: Path) -> None:
    """The folders a killed :func:`building` of ``folder`` left beside it (its process gone): a new one that never
    took the name is deleted; an old one moved aside takes the name back when nothing has it, else is deleted."""
    for path in sorted(folder.parent.glob(f".{glob.escape(folder.name)}.*-*")):
        kind, _, pid = path.name[len(folder.name) + 2 :].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _running(int(pid)):
            continue
        if kind == "old" and not folder.exists():
            os.rename(path, folder)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refuse_special(path: Path | str) -> None:
    """Refuse a name that is a FIFO, socket or device, or a link to one (``--json-out /dev/null``, ``/dev/stdout``):
    the rename would put a regular file in its place, and as root that replaced /dev/null itself."""
    try:
        found = os.stat(path)
    except OSError:  # none there: a new file
        return
    if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):  # a folder: the rename's own error says so
        raise NotRegularFile(f"{path} is not a regular file ({file_kind(found.st_mode)}): name a file to write")


def _mode_for(path: Path) -> int:
    """The permissions a file written to ``path`` gets: those of the file it replaces when this user owns it, so that
    results a user made private (``chmod 600``: they name patients) stay private when a run writes them again; else
    what open() would give a new file (0666 less the umask), where mkstemp's 0600 would hide results from the user's
    group. Another user's file is replaced by one this user owns: its mode (0640, say) would lock its owner out."""
    try:
        found = os.stat(path)
    except OSError:  # none there (or none that can be stat'ed): a new file
        return 0o666 & ~_umask()
    return stat.S_IMODE(found.st_mode) & 0o777 if found.st_uid == os.geteuid() else 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, which a file created by open() would get (reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s finished content the name ``path`` only if no file has it (an atomic no-replace rename)."""
    try:
        os.link(tmp, path)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # a file system without hard links (FAT): claim the name, then move the whole file over the empty claim
        with path.open("xb"):
            pass
        os.replace(tmp, path)
