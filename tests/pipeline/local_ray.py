"""Ray nodes started by a test as separate processes, each in its own temp dir, so the test stops
exactly the processes it started (other Ray instances on the machine are left alone: no `ray stop`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_executable() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def cluster_environment(token: str) -> dict:
    """What every node and driver of a test cluster gets: Ray's token authentication with the test's
    own token (not the machine's ~/.ray/auth_token), this checkout's code on the Python path, one
    thread per process, and no tracking URI or cluster address of the shell the tests run in."""
    environment = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    path = os.pathsep.join(p for p in (str(REPOSITORY), os.environ.get("PYTHONPATH")) if p)  # this checkout's code
    return environment | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def start_node(environment: dict, num_cpus: float, head_port: int | None = None, address: str | None = None,
               options: tuple[str, ...] = ()) -> Path:
    """`ray start` a head (head_port) or a worker joining `address`, in a fresh temp dir. -> the temp dir,
    which names the node's processes for stop_node."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-" if head_port else "raynode-", dir="/tmp"))
    command = [ray_executable(), "start", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", *options]
    command += ["--head", f"--port={head_port}", "--include-dashboard=false"] if head_port else [f"--address={address}"]
    try:
        subprocess.run(command, env=environment, check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as error:
        stop_node(temp_dir)
        raise RuntimeError(f"{' '.join(command)} failed:\n{error.stdout[-2000:]}{error.stderr[-2000:]}") from None
    return temp_dir


def node_processes(temp_dir: Path) -> list[int]:
    """Ids of the processes whose command line names temp_dir (every process of a node started above:
    raylet, log monitor; a head's GCS and autoscaler too) and of their descendants (Ray workers, agents)."""
    parents, found = {}, set()
    for pid_dir in Path("/proc").iterdir():
        try:
            if not pid_dir.name.isdigit():
                continue
            pid = int(pid_dir.name)
            state, parent = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if state in ("Z", "X"):  # dead, only not yet reaped
                continue
            parents[pid] = int(parent)
            if str(temp_dir) in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                found.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grown = bool(children)
    return sorted(found)


def stop_node(temp_dir: Path, remove: bool = True, timeout: float = 15.0) -> int:
    """SIGKILL the node's processes, and only those: what a machine that dies does. Repeated until
    none is left (a process may start one more while it is being killed; a killed one takes a
    moment to go). -> how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while (pids := node_processes(temp_dir)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= set(pids)
        time.sleep(0.2)
    if remove:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return len(killed)
