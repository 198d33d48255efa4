"""Real PACS components for tests: a private network namespace, Orthanc, DCMTK clients.

Rule: a service a test starts never listens beyond 127.0.0.1, and its loops are bounded in
count and time. Orthanc 1.10 (Debian's /usr/sbin/Orthanc) binds its HTTP and DICOM ports on
0.0.0.0 whatever its configuration says ("RemoteAccessAllowed": false only refuses HTTP
requests from other hosts once they are connected), so the tests run it inside a private
network namespace (:func:`private_network`): the namespace has only a loopback interface, so
nothing bound there is reachable from any other host. Entering one needs root
(CAP_SYS_ADMIN); without it the tests skip, saying why.

tests/conftest.py registers this module as a plugin (``pytest_plugins``), so a test module
just names the fixtures::

    from tests.pacs_servers import storescu

    def test_x(orthanc):  # orthanc depends on pacs_network: the module runs in the namespace
        storescu(orthanc.dicom_port, orthanc.aet, [path])

Fixtures: ``pacs_network`` (module scope: the module's tests run inside a private network
namespace) and ``orthanc`` (module scope: a running :class:`Orthanc`). Helpers:
:func:`storescu`, :func:`echoscu`, :func:`free_port`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STORESCU = Path("/usr/bin/storescu")
ECHOSCU = Path("/usr/bin/echoscu")

CLONE_NEWNET = 0x40000000  # <sched.h>
SIOCGIFFLAGS = 0x8913  # <linux/sockios.h>
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1  # <net/if.h>
_IFREQ = "16sH14s"  # struct ifreq: interface name, then ifr_flags (short) in the union

ORTHANC_START_S = 30.0  # seconds Orthanc may take to answer /system
ORTHANC_STOP_S = 10.0  # seconds between terminate and kill
DCMTK_TIMEOUT_S = 60.0  # seconds a storescu/echoscu run may take

NOT_ROOT_REASON = (
    "Orthanc 1.10 binds HTTP and DICOM on all interfaces whatever its config says, so the "
    "test runs it in a private network namespace, which needs root (CAP_SYS_ADMIN)"
)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


def die_with_parent() -> None:
    """In the child before exec: be sent SIGTERM if the test process dies (killed by a
    timeout, say), so that no Orthanc outlives the tests that started it."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _loopback_up() -> None:
    """Set IFF_UP on ``lo`` (a new network namespace starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0, b""))
        flags = struct.unpack(_IFREQ, got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP, b""))


@contextlib.contextmanager
def private_network(reason: str = NOT_ROOT_REASON) -> Iterator[None]:
    """Run the body in a new network namespace holding only a loopback interface (up).

    The namespace is the calling thread's (call it from the main thread); subprocesses and
    threads started inside inherit it, so nothing they bind is reachable from another host,
    whatever address they bind. Sockets opened before keep working in the old namespace.
    On exit the thread returns to its former namespace (``setns``). Skips the test (with
    ``reason``, why it needs the namespace) when ``unshare`` is refused.
    """
    libc = _libc()
    old = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            pytest.skip(f"{reason}; unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
        try:
            _loopback_up()
            yield
        finally:
            if libc.setns(old, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to the former network namespace: {err}")
    finally:
        os.close(old)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (in the current network namespace)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc (inside the private network namespace).

    ``http_url``: the DICOMweb root (``http://127.0.0.1:P/dicom-web``); ``rest_url``: the
    REST API root (``http://127.0.0.1:P``); ``dicom_port`` and ``aet``: its DICOM SCP;
    ``user``/``password``: the one registered HTTP user (any other is refused with 401);
    ``medres_aet``/``medres_port``: the modality "medres" Orthanc knows, to which C-MOVE
    with destination ``medres_aet`` sends (a storage SCP the test runs on
    127.0.0.1:``medres_port``); ``log``: Orthanc's stdout and stderr.
    """

    http_url: str
    rest_url: str
    http_port: int
    dicom_port: int
    aet: str
    user: str
    password: str
    medres_aet: str
    medres_port: int
    host: str
    config: Path
    log: Path
    process: subprocess.Popen

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def get(self, path: str, **kwargs) -> requests.Response:
        """GET ``rest_url + path`` with the registered user, 30 s timeout, status checked."""
        r = requests.get(self.rest_url + path, auth=self.auth, timeout=30, **kwargs)
        r.raise_for_status()
        return r

    def upload(self, path: Path) -> dict:
        """Store one DICOM file through REST (POST /instances); Orthanc's answer (ID,
        ParentStudy, Status: "Success" or "AlreadyStored")."""
        r = requests.post(
            self.rest_url + "/instances",
            data=Path(path).read_bytes(),
            auth=self.auth,
            headers={"Content-Type": "application/dicom"},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study with this StudyInstanceUID, or None."""
        r = requests.post(
            self.rest_url + "/tools/lookup", data=study_uid, auth=self.auth, timeout=30
        )
        r.raise_for_status()
        found = [x["ID"] for x in r.json() if x.get("Type") == "Study"]
        return found[0] if found else None

    def study_instances(self, study_uid: str) -> list[dict]:
        """The instances Orthanc holds for a StudyInstanceUID (its /studies/{id}/instances
        answer: each with ID, MainDicomTags (SOPInstanceUID...), ParentSeries); [] if none."""
        orthanc_id = self.study_id(study_uid)
        return [] if orthanc_id is None else self.get(f"/studies/{orthanc_id}/instances").json()

    def sop_uids(self, study_uid: str) -> set[str]:
        """The SOPInstanceUIDs Orthanc holds for a study."""
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.study_instances(study_uid)}

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]


def orthanc_config(
    folder: Path,
    *,
    http_port: int,
    dicom_port: int,
    medres_port: int,
    user: str = "medres",
    password: str = "medres-test-password",
    aet: str = "ORTHANC",
    medres_aet: str = "MEDRES",
    explorer: bool = False,
) -> dict:
    """The configuration the tests give Orthanc 1.10 (see the module docstring);
    ``explorer``: serve Orthanc Explorer (/app/explorer.html), off for the tests."""
    return {
        "Name": "medres-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "DicomAet": aet,
        "DicomCheckCalledAet": True,
        "DicomModalities": {"medres": [medres_aet, "127.0.0.1", medres_port]},
        # Any calling AET may echo, store (storescu's default is STORESCU), find and move, as
        # many PACS allow: a C-MOVE then fails only on its destination, which must be a
        # modality above (the "register medres's AE title" fault); get only from those.
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 2,  # seconds without a new instance before a study is "stable"
        "SaveJobs": False,
        "OrthancExplorerEnabled": explorer,
        "WebDavEnabled": False,
        "DicomScuTimeout": 10,
        "DicomScpTimeout": 10,
        "HttpTimeout": 30,
        "DicomAssociationCloseDelay": 0,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "DicomThreadsCount": 2,
        "MallocArenaMax": 2,
    }


@contextlib.contextmanager
def run_orthanc(
    folder: Path, *, start_s: float = ORTHANC_START_S, explorer: bool = False
) -> Iterator[Orthanc]:
    """Start Orthanc with a fresh configuration and storage under ``folder`` (call it inside
    :func:`private_network`); yield it once /system answers; stop it on exit (terminate,
    wait up to :data:`ORTHANC_STOP_S` seconds, kill). ``explorer``: see :func:`orthanc_config`."""
    if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc or its DICOMweb plugin not installed ({ORTHANC}, {DICOMWEB_PLUGIN})")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, medres_port = free_port(), free_port(), free_port()
    while len({http_port, dicom_port, medres_port}) < 3:  # bounded in practice: 3 of ~28000
        dicom_port, medres_port = free_port(), free_port()
    config = orthanc_config(
        folder,
        http_port=http_port,
        dicom_port=dicom_port,
        medres_port=medres_port,
        explorer=explorer,
    )
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    user, password = next(iter(config["RegisteredUsers"].items()))
    rest_url = f"http://127.0.0.1:{http_port}"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(ORTHANC), str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
            preexec_fn=die_with_parent,
        )
    server = Orthanc(
        http_url=f"{rest_url}/dicom-web",
        rest_url=rest_url,
        http_port=http_port,
        dicom_port=dicom_port,
        aet=config["DicomAet"],
        user=user,
        password=password,
        medres_aet=config["DicomModalities"]["medres"][0],
        medres_port=medres_port,
        host="127.0.0.1",
        config=config_path,
        log=log,
        process=process,
    )
    try:
        _wait_until_up(server, start_s)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=ORTHANC_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=ORTHANC_STOP_S)


def _wait_until_up(server: Orthanc, start_s: float) -> None:
    deadline = time.monotonic() + start_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"Orthanc exited with status {server.process.returncode} while starting; "
                f"its log:\n{server.log_tail()}"
            )
        try:
            r = requests.get(server.rest_url + "/system", auth=server.auth, timeout=2)
            if r.ok:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.1)
    pytest.fail(
        f"Orthanc did not answer /system in {start_s:g} s ({last}); log:\n{server.log_tail()}"
    )


def storescu(
    port: int,
    aet: str,
    files: Sequence[str | Path],
    calling_aet: str = "STORESCU",
    *,
    host: str = "127.0.0.1",
    timeout: float = DCMTK_TIMEOUT_S,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Send ``files`` with DCMTK's storescu to ``aet`` at ``host:port`` in one association;
    the finished process (text output captured; killed after ``timeout`` seconds, raising
    TimeoutExpired). DCMTK 3.6.7's storescu exits 0 only when every C-STORE was answered
    with success (a failure status: 192, a refused association: 1 or more); ``stderr``
    holds its ``-v`` lines (e.g. "Received Store Response (Error: CannotUnderstand)")."""
    cmd = [str(STORESCU), "-v", "-aet", calling_aet, "-aec", aet, *extra, host, str(port)]
    return subprocess.run(
        [*cmd, *map(str, files)], capture_output=True, text=True, timeout=timeout, check=False
    )


def echoscu(
    port: int,
    aet: str,
    calling_aet: str = "ECHOSCU",
    *,
    host: str = "127.0.0.1",
    timeout: float = DCMTK_TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """C-ECHO with DCMTK's echoscu; the finished process (exit 0: echo answered)."""
    return subprocess.run(
        [str(ECHOSCU), "-aet", calling_aet, "-aec", aet, host, str(port)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def pacs_network() -> Iterator[None]:
    """The module's tests run inside a private network namespace (only ``lo``)."""
    with private_network():
        yield


@pytest.fixture(scope="module")
def orthanc(pacs_network, tmp_path_factory, request) -> Iterator[Orthanc]:
    """A running Orthanc for the module (fresh storage); its log is written to the terminal
    when a test of the module failed."""
    failed_before = request.session.testsfailed
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
        if request.session.testsfailed > failed_before:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"\n--- Orthanc log ({server.log}) ---\n{server.log_tail()}")


def wait_until(condition, what: str, timeout: float = 60.0, poll: float = 0.1):
    """``condition()``'s first true value, polled every ``poll`` s for at most ``timeout``
    s; an AssertionError naming ``what`` after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
