"""Files in and out: atomic writes, private copies for libraries, output checks and JSON run records.

The guarantees (docs/reliability.md):
- an output appears whole or not at all (written beside the target, then renamed), with the
  permissions an ordinary `open()` gives under the user's umask;
- a library never receives the path of a user's file, only a private copy in a private folder;
- an output never lands on an input, on a file of the wrong kind, or on another command's record;
- an interrupted command removes what it had half-written (`remove_unfinished`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OrinflowError

# Errors of the disk itself while an output is written (full disk, quota, file too large, read-only, I/O)
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}

# Temporary files and folders of this process that are not finished: an interrupt removes them.
_unfinished: set[Path] = set()


def umask_mode(mode: int = 0o666) -> int:
    """`mode` under the process umask: what a plain open() (0o666) or mkdir() (0o777) would give."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OrinflowError(f"cannot create output folder {target.parent}: {e.strerror}") from e
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix + ".part", dir=target.parent)
    except OSError as e:
        raise OrinflowError(f"cannot write in {target.parent}: {e.strerror}") from e
    os.close(fd)
    tmp_path = Path(tmp)
    _unfinished.add(tmp_path)
    try:
        yield tmp_path
        # mkstemp creates 0600 files and libraries may recreate the file: give it the umask's mode
        os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, target)
    except OSError as e:
        if e.errno in WRITE_FAILURES:  # a full disk or quota: name the output, not just the errno
            raise OrinflowError(f"writing {target} failed: {e.strerror}") from e
        raise
    finally:
        _unfinished.discard(tmp_path)
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def private_folder(prefix: str = "orinflow-", dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """A private temporary folder (in `dir`, default the system's), always removed (also on an interrupt).

    Every temporary folder orinflow makes comes from here, so the interrupt handler knows it
    (tests/test_architecture.py refuses `tempfile` anywhere else)."""
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    except OSError as e:
        raise OrinflowError(f"cannot write in {dir or tempfile.gettempdir()}: {e.strerror}") from e
    _unfinished.add(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _unfinished.discard(path)


@contextlib.contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """A failure to write while `target` is made (a full or read-only disk, no permission) is one line naming
    `target`, not a raw OSError naming a temporary file."""
    try:
        yield
    except OSError as e:
        if e.errno in WRITE_FAILURES or e.errno in (errno.EACCES, errno.EPERM):
            raise OrinflowError(f"writing {target} failed: {e.strerror}") from e
        raise


def made_folder(folder: Path) -> Path:
    """`folder`, made with its parents when missing (a failure names it)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OrinflowError(f"cannot create output folder {folder}: {e.strerror}") from e
    return Path(folder)


def writable_place(path: Path, flag: str = "-o") -> None:
    """Before any work: the nearest existing folder of `path` (itself, or one above) can be written to."""
    place = path if path.is_dir() else path.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if place.exists() and not os.access(place, os.W_OK | os.X_OK):
        raise OrinflowError(f"{flag} {path}: {place} cannot be written to (read-only or no permission)")


def private_copy(source: str | os.PathLike, folder: Path) -> Path:
    """Copy a user's file (an ONNX also with its external-data files) into `folder` for a library to use.

    Libraries such as ModelOpt write beside, or over, the path they are given.
    """
    source = Path(source)
    copy = Path(folder) / source.name
    shutil.copyfile(source, copy)
    if source.suffix.lower() == ".onnx":
        for location in _external_data(source):
            if (source.parent / location).is_file() and not Path(location).is_absolute():
                (copy.parent / location).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / location, copy.parent / location)
    return copy


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model: an ONNX's external-data files count with it (its .onnx alone may be a stub)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix.lower() == ".onnx":
        size += sum((path.parent / location).stat().st_size for location in _external_data(path)
                    if (path.parent / location).is_file())
    return size


def copy_model(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """`source` as one self-contained file at `target`: an ONNX's external data is embedded (a copy of the
    .onnx alone would point at files the copy does not have)."""
    source, target = Path(source), Path(target)
    if source.suffix.lower() != ".onnx" or not _external_data(source):
        shutil.copyfile(source, target)
        return target
    import onnx

    model = onnx.load(str(source))  # reads the external data into the tensors
    if model.ByteSize() >= 2**31 - 1:
        raise OrinflowError(f"{source} with its external data is over 2 GB, more than one ONNX file holds")
    onnx.save(model, str(target))
    return target


def _external_data(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
            if entry.key == "location"}


def remove_unfinished() -> None:
    """Remove every temporary file and folder this process has not finished (interrupt handler)."""
    for path in list(_unfinished):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    _unfinished.clear()


# ------------------------------------------------------------------ output checks
def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_output(path: str | os.PathLike, suffixes: tuple[str, ...], inputs: Iterable = (), flag: str = "-o",
                 command: str | None = None, record_of: str | None = None) -> Path:
    """Refuse, before any work, an output file of the wrong kind, one that is an input, or a folder.

    `command`: the output gets a run record (`record_path`), which must not be an input or another command's
    record. A JSON output never replaces an orinflow record: only one of `record_of`'s own when the output
    is itself that command's record (`evaluate --json`). Every path-writing flag of every command goes
    through here (tests/test_bad_inputs.py lists them from the CLI).
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OrinflowError(f"{flag} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise OrinflowError(f"{flag} {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    targets = [path] + ([record_path(path)] if command else [])
    for source in _paths(inputs):
        for target in targets:
            if _same_file(target, source):
                raise OrinflowError(f"{flag} {path} would overwrite the input {source}" +
                                    ("" if target == path else f" (with its record {target})"))
    if command:
        check_record_slot(record_path(path), command, path)
    if path.suffix.lower() == ".json" and path.is_file():
        check_record_slot(path, record_of, path, flag)
    writable_place(path, flag)
    return path


def check_output_folder(path: str | os.PathLike, inputs: Iterable = (), flag: str = "-o",
                        replaced: bool = False) -> Path:
    """An output folder must not be a file; when it is `replaced` whole, it must hold no input."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OrinflowError(f"{flag} {path} is a file; give a folder")
    for source in _paths(inputs):
        if _same_file(path, source) or (replaced and _inside(source, path)):
            raise OrinflowError(f"{flag} {path} would replace the input {source}")
    writable_place(path, flag)
    return path


def check_replaceable_folder(path: Path, owner: str, marker: str, products: Iterable[str] = (), flag: str = "-o",
                             legacy: Iterable[str] | None = None) -> None:
    """`--overwrite` replaces a folder whole only when orinflow made it: empty, or holding `marker` (a record of
    `owner`) and, file by file and at every depth, nothing but what that record lists in `tree` (every file it
    wrote) and the `products` its scripts write on the device: files of those names at the top, and `__pycache__`
    folders of .pyc files anywhere. A record of an older orinflow, without `tree`, vouches for the files it lists
    at the top and for `legacy`, the files its folders would hold (deploy: the bundled package's modules).
    Never the working folder, one above it, the home folder or the root."""
    if not path.exists():
        return
    resolved = path.resolve()
    if resolved == Path(resolved.anchor) or _inside(Path.cwd(), resolved) or _inside(Path.home(), resolved):
        raise OrinflowError(f"{flag} {path} is the working folder, one above it, the home folder or the root: "
                            "--overwrite never replaces it; give a new folder")
    if not any(path.iterdir()):
        return
    record = _read_record(path / marker)
    if record.get("command") != owner:
        raise OrinflowError(f"{flag} {path} holds files orinflow did not write (no {marker} of `orinflow {owner}`): "
                            "--overwrite only replaces a folder orinflow made; give a new folder")
    tree = record.get("tree")
    if not isinstance(tree, list):
        if legacy is None:
            raise OrinflowError(f"{flag} {path} was made by an older orinflow whose {marker} does not list its files "
                                "one by one: --overwrite cannot tell them from yours; remove it yourself or give a "
                                "new folder")
        tree = [name for name in record.get("files", []) if (path / str(name)).is_file()] + list(legacy)
    known = set(tree) | {marker}
    foreign = [name for name in _tree(path) if name not in known and not _device_product(name, set(products))]
    if foreign:
        raise OrinflowError(f"{flag} {path} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} orinflow "
                            f"did not write ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}): "
                            "--overwrite only replaces a folder orinflow made; move them or give a new folder")


def folder_tree(path: Path) -> list[str]:
    """Every file below `path`, as sorted relative POSIX paths (what a record's `tree` lists)."""
    return sorted(_tree(path))


def _tree(path: Path) -> list[str]:
    """Relative paths of every file below `path`, and of every empty folder or non-regular entry (a link, a
    socket) there, which no record lists."""
    found = []
    for entry in path.rglob("*"):
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            found.append(entry.relative_to(path).as_posix() + " (not a plain file)")
        elif entry.is_file() or not any(entry.iterdir()):
            found.append(entry.relative_to(path).as_posix())
    return found


def _device_product(name: str, products: set[str]) -> bool:
    parts = name.split("/")
    if len(parts) == 1:
        return name in products
    return "__pycache__" in products and (parts[-1] == "__pycache__" or (parts[-2] == "__pycache__"
                                                                          and parts[-1].endswith(".pyc")))


def replace_folder(staging: Path, target: Path) -> None:
    """Put the finished `staging` folder at `target`; an existing `target` is moved aside first and removed
    only once the new folder is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
        _unfinished.add(old)
    try:
        os.replace(staging, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
            _unfinished.discard(old)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        _unfinished.discard(old)


def _paths(values: Iterable) -> list[Path]:
    return [Path(v) for v in values if v is not None and str(v) != ""]


# ------------------------------------------------------------------ run records
def record_path(output: str | os.PathLike) -> Path:
    """The run record beside an output: <model>.json for an ONNX model, <file>.<suffix>.json otherwise.

    A model's record keeps the plain stem (what `orinflow report` reads beside a model); every other
    output keeps its suffix in the record's name, so `x.npy` and `x.onnx` never share `x.json`.
    """
    output = Path(output)
    if output.suffix.lower() == ".onnx":
        return output.with_suffix(".json")
    return output.with_name(output.name + ".json")


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_record_slot(path: Path, command: str | None, output: str | os.PathLike, flag: str | None = None) -> None:
    """A record never replaces the record of another command's output (a model's record goes with the model);
    `command` None: the file written there is no record, so it may replace none."""
    existing = _read_record(path) if Path(path).is_file() else {}
    owner, described = existing.get("command"), existing.get("output") or existing.get("model")
    if not isinstance(owner, str):
        return
    writing = f"writing the {command} record" if command else "writing there"
    if command is None or (owner != command and not (described and _same_file(Path(described), Path(output)))):
        raise OrinflowError(f"{(flag + ' ') if flag else ''}{path} is the record of `orinflow {owner}` for {described}; "
                            f"{writing} would replace it: choose another output name")


def write_json(target: str | os.PathLike, data: dict) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return Path(target)


def write_record(output: str | os.PathLike, record: dict) -> Path:
    """The run record of `output` (`record_path`), refusing to replace another command's record."""
    path = record_path(output)
    if "command" in record:
        check_record_slot(path, record["command"], output)
    return write_json(path, record)


def read_cached(path: Path, say=print) -> dict | None:
    """A cache entry, or None when there is none; a damaged entry is named, ignored and measured again."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        say(f"note: the cache entry {path} is unreadable ({type(e).__name__}); measuring again")
        return None
    if not isinstance(data, dict):
        say(f"note: the cache entry {path} is damaged; measuring again")
        return None
    return data


def write_cached(path: Path, data: dict, say=print) -> None:
    """Store a finished result in the cache; a cache that cannot be written is skipped with a note (the
    result itself is never lost for it)."""
    try:
        write_json(path, data)
    except (OrinflowError, OSError) as e:
        say(f"note: not cached ({e}); the result stands")


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise OrinflowError(f"{what} not found: {path}")
    if not path.is_file():
        raise OrinflowError(f"{what} is not a file: {path}")
    return path
