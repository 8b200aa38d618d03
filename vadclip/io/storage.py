"""Where data lives.  Every path a user gives — manifests, video folders and globs,
paths inside manifests, feature sets, ground truth, output folders, Ray Train
storage, checkpoints — is a local path or a URI (``s3://``, ``gs://``, ``abfs://``,
``hdfs://``, ``file://``), read and written through ``pyarrow.fs``, the layer Ray
Data itself uses.  Credentials and endpoints come from the usual environment
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``).

Ray tasks, actors and Train workers do not run in the driver's working directory
(under ``ray job submit`` not even on the driver's node), so a local path is made
absolute on the driver (:func:`absolute`) before it reaches them; a URI is passed
on as it is.  Object stores have no rename: :func:`write_bytes` writes an object
in one request, so it exists whole or not at all.  Nothing else in the package
calls ``os.path`` on a user's path."""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from typing import Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import pyarrow.fs as pafs

from vadclip.errors import TRANSIENT, EnvironmentProblem, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnsupportedURI(InputError):
    """A URI whose scheme pyarrow.fs does not know (or a malformed one)."""


COPY_CHUNK = 8 << 20    # bytes per read when streaming an object to node-local scratch
_local = pafs.LocalFileSystem()
_cache: dict = {}
_lock = threading.Lock()


# ------------------------------------------------------------------ transient errors
# What object stores answer when they are busy or the network hiccups (TRANSIENT, in
# vadclip.errors; pyarrow's S3 client has already retried some of these itself when the
# error reaches us).


def is_transient(exc: BaseException) -> bool:
    """A storage error worth retrying: busy or unreachable storage, never a missing key."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # delta-rs (the output tables' commit log) raises its object store's errors as DeltaError
    return (isinstance(exc, OSError) or type(exc).__name__ == "DeltaError") and bool(TRANSIENT.search(str(exc)))


def retry_settings() -> Tuple[int, float, float]:
    """(attempts, first delay, largest delay in seconds): ``VADCLIP_STORAGE_RETRIES``
    (attempts, default 10) — about two minutes of a store answering nothing but errors
    before the job fails."""
    return max(1, int(os.environ.get("VADCLIP_STORAGE_RETRIES", "10"))), 0.25, 20.0


def retrying(fn: Callable[[], T], what: str) -> T:
    """``fn()``, retried with exponential backoff and full jitter while it fails with a
    transient storage error; once the attempts are spent it raises
    :class:`EnvironmentProblem` naming ``what`` — storage that keeps failing is the
    environment's problem, never a video's."""
    attempts, first, cap = retry_settings()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - sorted by is_transient below
            if not is_transient(e):
                raise
            if attempt == attempts:
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise EnvironmentProblem(f"{what}: storage kept failing after {attempts} attempts: {msg}") from e
            delay = random.uniform(0, min(cap, first * 2 ** (attempt - 1)))
            log.debug("%s: transient storage error (%s), retry %d in %.2fs", what, e, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# a password may hold "/" or "+" (an Azure storage key is base64): it runs to the "@"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@\s]*)@")


# a credential in a URI's query string (``s3://b/k?access_key=…&secret_key=…``, an Azure SAS's
# ``sig=``, a signed URL's ``X-Amz-Signature=``/``X-Amz-Credential=``, ``token=``, ``password=``)
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:key|secret|token|password|passwd|pwd|sig|signature|"
                           r"credential|sas)[A-Za-z0-9_.-]*))=(?P<value>[^&;#\s\"']*)", re.I)


def redact(text):
    """``text`` with the password of every URI in it replaced (``postgresql://user:***@host/db``,
    ``abfs://account:***@container/…``) and every credential in a query string
    (``?access_key=***``), for whatever a job writes where others read it: summaries, logs,
    the report, MLflow params and tags.  Anything but a string is returned as it is."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}=***", text) if ("?" in text or "&" in text) else text


def redact_all(value):
    """:func:`redact` through dicts, lists and tuples (a summary before it is printed, written
    or logged); keys are kept."""
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    return redact(value)


def is_uri(path: str) -> bool:
    return "://" in str(path)


def is_local(path: str) -> bool:
    """A path of this node's disk (a plain path or ``file://``)."""
    return not is_uri(path) or str(path).startswith("file://")


def absolute(path: Optional[str]) -> Optional[str]:
    """A local path made absolute against the driver's working directory; a URI or None as is."""
    if path is None or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


def resolve(path: str) -> Tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it).  Filesystems are cached per scheme and bucket."""
    path = str(path)
    if not is_uri(path):
        return _local, os.path.abspath(os.path.expanduser(path))
    if path.startswith("file://"):
        return _local, path[len("file://"):]
    scheme, rest = path.split("://", 1)
    if scheme not in ("s3", "gs", "gcs"):
        return _from_uri(path)
    key = (scheme, rest.split("/", 1)[0], os.environ.get("AWS_ENDPOINT_URL"))
    with _lock:
        fs = _cache.get(key)
    if fs is None:
        fs, _ = _from_uri(_small_puts(path) if scheme == "s3" else path)
        with _lock:
            _cache[key] = fs
    return fs, rest.rstrip("/")


def _small_puts(uri: str) -> str:
    """``uri`` with pyarrow's ``allow_delayed_open``: an object smaller than one upload
    part (a commit marker, a lease, a summary, most parts) goes up in one PutObject
    instead of a multipart upload's three requests (CreateMultipartUpload, UploadPart,
    CompleteMultipartUpload), apache/arrow#40557.  A URI that sets it keeps its own."""
    if "allow_delayed_open=" in uri:
        return uri
    return uri + ("&" if "?" in uri else "?") + "allow_delayed_open=true"


def _from_uri(path: str):
    import pyarrow as pa

    try:
        return pafs.FileSystem.from_uri(path)
    except pa.ArrowInvalid as e:   # an unknown scheme or a malformed URI: the user's input
        raise UnsupportedURI(f"{path}: not a path or a supported URI ({str(e).splitlines()[0][:160]})") from None


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *[p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    if is_uri(path):
        scheme, rest = str(path).rstrip("/").split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/")) if is_uri(path) else os.path.basename(str(path))


def extension(path: str) -> str:
    """``.mp4`` of ``…/name.mp4`` (lower case; empty when there is none)."""
    return posixpath.splitext(basename(path))[1].lower()


def _uri_of(template: str, inner: str) -> str:
    """The user-facing name of ``inner`` (a path inside the filesystem of ``template``)."""
    if not is_uri(template):
        return inner
    scheme = str(template).split("://", 1)[0]
    return f"{scheme}://{inner.lstrip('/')}" if scheme != "file" else f"file://{inner}"


def info(path: str) -> pafs.FileInfo:
    fs, p = resolve(path)
    return retrying(lambda: fs.get_file_info(p), path)


def exists(path: str) -> bool:
    return info(path).type != pafs.FileType.NotFound


def isfile(path: str) -> bool:
    return info(path).type == pafs.FileType.File


def isdir(path: str) -> bool:
    return info(path).type == pafs.FileType.Directory


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    retrying(lambda: fs.create_dir(p, recursive=True), path)


def list_files(directory: str, recursive: bool = True, suffixes: Optional[Tuple[str, ...]] = None) -> List[str]:
    """Files under ``directory`` (sorted, named as the user would name them)."""
    return sorted(listed_files(directory, recursive, suffixes))


LIST_THREADS = 16     # an object store's folders listed at once


def listed_files(directory: str, recursive: bool = True,
                 suffixes: Optional[Tuple[str, ...]] = None) -> Dict[str, pafs.FileInfo]:
    """``{file: its info}`` under ``directory`` (:func:`listing`, gathered)."""
    return {f: i for batch in listing(directory, recursive, suffixes) for f, i in batch}


def listing(directory: str, recursive: bool = True,
            suffixes: Optional[Tuple[str, ...]] = None) -> Iterator[List[Tuple[str, pafs.FileInfo]]]:
    """The files under ``directory`` with their infos, a folder at a time: an object store
    lists 1,000 keys a request with their sizes and modification times, so knowing what
    changed in an archive costs a request per 1,000 files, not one per file.

    The folder's own level is listed first, then each of its folders (a camera's, a
    day's), :data:`LIST_THREADS` at once, each yielded as it comes: a store's pages of one
    listing come one after another (a year of 100 cameras in hourly files is 900 of them),
    the folders' side by side; and a caller that keeps only columns of each batch never
    holds an info object per file of the whole archive."""
    from concurrent.futures import ThreadPoolExecutor

    fs, p = resolve(directory)

    def files(infos: List[pafs.FileInfo]) -> List[Tuple[str, pafs.FileInfo]]:
        return [(_uri_of(directory, i.path), i) for i in infos if i.type == pafs.FileType.File
                and (suffixes is None or i.path.lower().endswith(suffixes))]

    def listed(where: str, deep: bool) -> List[pafs.FileInfo]:
        return retrying(lambda: fs.get_file_info(pafs.FileSelector(where, recursive=deep, allow_not_found=True)),
                        directory)

    top = listed(p, False)
    yield files(top)
    folders = [i.path for i in top if i.type == pafs.FileType.Directory] if recursive else []
    del top
    if folders and is_local(directory):     # a local disk gains nothing from threads, and they hold memory
        for f in folders:
            yield files(listed(f, True))
    elif folders:
        with ThreadPoolExecutor(max_workers=max(1, min(LIST_THREADS, len(folders)))) as pool:
            for more in pool.map(lambda f: files(listed(f, True)), folders):
                yield more


def list_infos(directory: str) -> List[pafs.FileInfo]:
    """The files directly in ``directory`` with their sizes and modification times as
    the storage keeps them (the server's clock for object stores); [] when it does not exist."""
    fs, p = resolve(directory)
    infos = retrying(lambda: fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True)),
                     directory)
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def glob(pattern: str) -> List[str]:
    """Files matching a glob (``*``, ``?``, ``[...]``, ``**``) — local or in a bucket."""
    if not is_uri(pattern):
        import glob as _glob

        return sorted(p for p in _glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    scheme, rest = str(pattern).split("://", 1)
    parts = rest.split("/")
    fixed = next((i for i, s in enumerate(parts) if any(c in s for c in "*?[")), len(parts))
    base = f"{scheme}://" + "/".join(parts[:fixed])
    if fixed == len(parts):
        return [pattern] if isfile(pattern) else []
    pat = _glob_regex(rest)
    return [f for f in list_files(base, recursive=True) if pat.match(f.split("://", 1)[1])]


def _glob_regex(pattern: str):
    """``**/`` any folders, ``*`` and ``?`` within one folder name, ``[...]`` a class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            out.append(pattern[i:j + 1])
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def open_input(path: str):
    """A seekable binary file object (close it, or use ``with``)."""
    fs, p = resolve(path)
    return fs.open_input_file(p)


def read_bytes(path: str) -> bytes:
    def read():
        with open_input(path) as fh:
            return fh.read()
    return retrying(read, path)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole object: locally through a temporary name and an atomic rename, in
    object storage in one upload, so that a reader sees all of it or nothing."""
    fs, p = resolve(path)
    if fs is _local:
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
        tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    def put():
        with fs.open_output_stream(p) as out:
            out.write(data)
    retrying(put, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def delete(path: str) -> None:
    fs, p = resolve(path)

    def rm():
        try:
            fs.delete_file(p)
        except FileNotFoundError:
            pass
    retrying(rm, path)


def delete_dir(path: str) -> None:
    """A folder and everything under it (nothing where there is none)."""
    fs, p = resolve(path)

    def rm():
        try:
            fs.delete_dir(p)
        except FileNotFoundError:
            pass
    retrying(rm, path)


def upload(local_path: str, dest: str) -> None:
    """Copy a local file to ``dest`` (streamed; whole or nothing as in :func:`write_bytes`
    for objects up to memory size, streamed multipart beyond 256 MB)."""
    fs, p = resolve(dest)
    if fs is _local:
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
        if os.path.abspath(local_path) != p:
            tmp = p + f".{uuid.uuid4().hex[:8]}.tmp"
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, p)
        return
    if os.path.getsize(local_path) <= (256 << 20):
        with open(local_path, "rb") as fh:
            write_bytes(dest, fh.read())
        return
    def put():
        with open(local_path, "rb") as src, fs.open_output_stream(p) as out:
            shutil.copyfileobj(src, out, COPY_CHUNK)
    retrying(put, dest)


def _copy_down(fs, p: str, local: str) -> None:
    """Stream object ``p`` of ``fs`` into the local file ``local`` (truncated first, so a
    retried copy starts over)."""
    from vadclip.io.progress import beat

    with open(local, "wb") as out, fs.open_input_stream(p) as src:
        while True:
            buf = src.read(COPY_CHUNK)
            if not buf:
                break
            out.write(buf)
            beat()              # a stalled read shows as no progress (vadclip.io.progress)


def upload_dir(local_dir: str, dest: str) -> List[str]:
    out = []
    for d, _, files in os.walk(local_dir):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(d, f), local_dir)
            target = join(dest, *rel.split(os.sep))
            upload(os.path.join(d, f), target)
            out.append(target)
    return out


def scratch_dir() -> str:
    """Node-local scratch for objects that must be files (decord reads files):
    ``$VADCLIP_SCRATCH`` or the system temporary folder."""
    d = os.environ.get("VADCLIP_SCRATCH") or tempfile.gettempdir()
    os.makedirs(d, exist_ok=True)
    return d


@contextlib.contextmanager
def local_file(path: str, suffix: str = "", size: Optional[int] = None) -> Iterator[str]:
    """A local file with the content of ``path``: the path itself when it is local,
    else a copy streamed (``COPY_CHUNK`` bytes at a time, so memory stays bounded)
    into node-local scratch and removed on exit, failure included.  A copy of ``size``
    bytes that the scratch folder cannot hold is the environment's problem, said before
    a byte is copied (a day-long recording on a pod that asks for no ephemeral storage)."""
    fs, p = resolve(path)
    if fs is _local:
        yield p
        return
    scratch = scratch_dir()
    _sweep_dead_copies(scratch)
    if size is not None:
        free = shutil.disk_usage(scratch).free
        if size + SCRATCH_RESERVE > free:
            raise EnvironmentProblem(f"{path}: its {size / 2**30:.2f} GiB do not fit in this node's scratch {scratch} "
                                     f"({free / 2**30:.2f} GiB free, {SCRATCH_RESERVE / 2**20:.0f} MiB kept): give the "
                                     "decode workers more ephemeral storage, or point VADCLIP_SCRATCH at a larger disk")
    fd, tmp = tempfile.mkstemp(prefix=f"vadclip-{os.getpid()}-", suffix=suffix, dir=scratch)
    os.close(fd)
    try:
        retrying(lambda: _copy_down(fs, p, tmp), path)
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_COPY_NAME = re.compile(r"^vadclip-(\d+)-")


SCRATCH_RESERVE = 256 * 2**20    # left free on a node's scratch disk after a copy


def _sweep_dead_copies(scratch: str) -> None:
    """Remove the copies that processes no longer alive on this node left behind (a
    worker SIGKILLed mid-copy, with its job's driver, never reaches its ``finally``).
    A copy is named after the process that writes it; the folder holds only the copies
    in flight, so a look at it before each copy costs little."""
    for name in os.listdir(scratch):
        m = _COPY_NAME.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:       # its writer is gone: nobody will remove it
            try:
                os.remove(os.path.join(scratch, name))
            except OSError:
                pass
        except PermissionError:          # alive, another user's
            pass


def download(path: str, dest: str) -> None:
    """Copy ``path`` (local or in object storage) to the local file ``dest``, streamed
    ``COPY_CHUNK`` bytes at a time, whole or not at all (a temporary name, then a rename)."""
    fs, p = resolve(path)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = f"{dest}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        retrying(lambda: _copy_down(fs, p, tmp), path)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
