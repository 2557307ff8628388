"""Joining a Ray cluster: a fast reachability check, token authentication where the head uses it,
one clear error instead of Ray's retries, and the MLflow address as trials on other nodes see it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)


def join_cluster(address: str, verbose: bool) -> None:
    """ray.init on an existing cluster, with Ray's token authentication where a token is at hand.

    A head started by `ray start --head` (Ray >= 2.59) requires the token it keeps in
    ~/.ray/auth_token, but ray.init with an explicit address never turns token mode on by itself
    (only a local cluster found automatically does). Where the user chose no mode and a token is
    available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), turn it on the way Ray does
    for local clusters. A failed connection is one error saying what to check.
    """
    import ray

    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # another Ray version: the environment variable alone (read when ray is imported)
        token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
            os.environ["RAY_AUTH_MODE"] = "token"
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        _ask_cluster_once(address)
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=verbose)
    except (ConnectionError, RuntimeError) as error:
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        raise ConnectionError(
            f"cannot join the Ray cluster at {address!r} ({str(error).splitlines()[0][:300]}); authentication mode "
            f"here: {mode}. If the head uses token authentication (the default of `ray start --head` since Ray 2.59), "
            "give this machine the head's token: copy the head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN "
            "(see `ray get-auth-token` on the head). Otherwise check the address, or leave --address unset to "
            "run locally") from None


def _ask_cluster_once(address: str) -> None:
    """One request to the head (its cluster id), as ray.init's first step. ray.init repeats a refused
    request 20 times over 20 s, each time printing a warning line from Ray's C++ core (printed before
    RAY_BACKEND_LOG_LEVEL applies); here Ray's output of the one try is kept back and its reason raised."""
    try:
        from ray._raylet import GcsClient
    except ImportError:  # another Ray version: ray.init alone
        return
    if "://" in address or address == "auto":  # Ray Client or a local cluster: ray.init finds its way
        return
    failed = None
    with tempfile.TemporaryFile(mode="w+") as kept:
        with _stderr_to(kept):
            try:
                GcsClient(address=address)
            except Exception as error:  # Ray raises RpcError, RuntimeError or others by version
                failed = error
        kept.seek(0)
        output = kept.read()
    if failed is None:
        log.debug("Ray's output while reaching %s: %s", address, output)
        return
    reasons = [line.split(": ", 1)[-1] for line in output.splitlines() if "gcs_client" in line]
    raise ConnectionError((reasons or [f"{type(failed).__name__}: {failed}"])[0])


@contextlib.contextmanager
def _stderr_to(file):
    """File descriptor 2 (Python's and C++'s writes to stderr) goes to `file` for the block."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def tracking_uri_for_cluster(uri: str, driver_ip: str) -> str:
    """The tracking URI as trials on other nodes must see it: a server the driver names localhost
    (ray_cluster.yaml's head exports http://localhost:5000) is, on a worker node, that worker itself;
    name it by the driver's IP instead, which the driver reaches as well (the server listens on all
    interfaces). Any other URI is returned as it is."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.hostname not in ("localhost", "127.0.0.1", "0.0.0.0", "::1"):
        return uri
    credentials = parts.netloc.rpartition("@")[0]
    host = f"[{driver_ip}]" if ":" in driver_ip else driver_ip  # an IPv6 address in a URL
    netloc = (credentials + "@" if credentials else "") + host + (f":{parts.port}" if parts.port else "")
    log.info("MLflow tracking server %s: trials on every node use %s", uri, netloc)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_ray_address(address: str) -> None:
    """Fail in seconds, not minutes, when a cluster address does not answer."""
    if address == "auto" or address.startswith(("ray://", "anyscale://")) and ":" not in address[6:]:
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=5):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({error}); start it with `ray up ray_cluster.yaml`, "
            "check the address (head node IP and port 6379), or leave --address unset to run locally"
        ) from None
