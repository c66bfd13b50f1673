"""A real Kubernetes control plane on 127.0.0.1 for tests.

Runs etcd + kube-apiserver + kube-controller-manager (Kubernetes 1.20.2, built
from Debian's source package by ``tests/cluster/build.sh``) as subprocesses.
There is no kubelet and no scheduler: Deployments get ReplicaSets and Pods,
and the Pods stay Pending. Admission webhooks (MutatingAdmissionWebhook,
ValidatingAdmissionWebhook) are enabled; ServiceAccount admission is off, so
Pods need no service-account token.

Standard library only. Typical use from pytest::

    from tests.cluster import apiserver

    @pytest.fixture(scope="session")
    def kube(tmp_path_factory):
        ext = apiserver.external_cluster()      # honour a reachable $KUBECONFIG
        if ext:
            yield ext                           # (a kubeconfig path)
            return
        cluster = apiserver.start_cluster(tmp_path_factory.mktemp("kube"))
        try:
            yield cluster.kubeconfig
        finally:
            cluster.stop()

Manual use: ``python -m tests.cluster.apiserver [--workdir DIR]`` starts the
cluster, prints ``export KUBECONFIG=...`` and runs until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KUBE_VERSION = "1.20.2"
CACHE_ROOT = Path(os.environ.get("TIDINGS_KUBE_CACHE", "/var/cache/tidings"))
DEFAULT_BIN_DIR = CACHE_ROOT / f"kube-{KUBE_VERSION}" / "bin"
BUILD_SCRIPT = Path(__file__).resolve().with_name("build.sh")

ADMIN_USER = "tidings-admin"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"  # only a config value: nothing is routed

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""


# --------------------------------------------------------------------------
# binaries


def find_binaries(build: bool | None = None) -> dict[str, str]:
    """Paths of etcd, kube-apiserver and kube-controller-manager.

    Looks in $TIDINGS_KUBE_BIN_DIR, then the build cache
    (/var/cache/tidings/kube-1.20.2/bin), then $PATH. When a binary is missing
    and ``build`` is true (default: true unless $TIDINGS_KUBE_AUTOBUILD=0), runs
    tests/cluster/build.sh, which installs etcd and builds the kube binaries
    (several minutes, once per machine).
    """
    if build is None:
        build = os.environ.get("TIDINGS_KUBE_AUTOBUILD", "1") != "0"
    found = _lookup_binaries()
    missing = [name for name, path in found.items() if path is None]
    if missing and build:
        sys.stderr.write(
            f"[tidings cluster] {', '.join(missing)} missing: running {BUILD_SCRIPT} "
            "(first time on this machine: ~8 minutes)\n"
        )
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True
        )
        if proc.returncode != 0:
            raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
        found = _lookup_binaries()
        missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ClusterError(
            f"missing {', '.join(missing)}: run `bash tests/cluster/build.sh` first "
            f"(caches binaries in {DEFAULT_BIN_DIR})"
        )
    return {name: str(path) for name, path in found.items()}


def _lookup_binaries() -> dict[str, str | None]:
    dirs = []
    if os.environ.get("TIDINGS_KUBE_BIN_DIR"):
        dirs.append(Path(os.environ["TIDINGS_KUBE_BIN_DIR"]))
    dirs.append(DEFAULT_BIN_DIR)
    out: dict[str, str | None] = {}
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        path = None
        for d in dirs:
            if (d / name).is_file() and os.access(d / name, os.X_OK):
                path = str(d / name)
                break
        out[name] = path or shutil.which(name)
    return out


# --------------------------------------------------------------------------
# certificates (openssl CLI)


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{proc.stdout}")


def _make_ca(d: Path, name: str = "tidings-test-ca") -> tuple[Path, Path]:
    key, crt = d / "ca.key", d / "ca.crt"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=d)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(key),
        "-sha256",
        "-days",
        "3650",
        "-subj",
        f"/CN={name}",
        "-out",
        str(crt),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )
    return crt, key


def issue_serving_cert(
    ca_cert: os.PathLike | str,
    ca_key: os.PathLike | str,
    out_dir: os.PathLike | str,
    name: str,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
) -> tuple[Path, Path]:
    """Sign a TLS server certificate for ``hosts`` (IPs or DNS names) with the CA.

    Returns (cert_path, key_path), written as ``<out_dir>/<name>.crt|.key``.
    Handy for admission-webhook servers: put the cluster's ``ca_file`` content
    (base64) into the webhook's ``caBundle``.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    key, csr, crt, ext = (d / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
    sans = []
    for h in hosts:
        sans.append(
            ("IP:" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+:[0-9a-fA-F:]*", h) else "DNS:") + h
        )
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(sans)}\n"
    )
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=d)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr), cwd=d)
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-sha256",
        "-days",
        "3650",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
        cwd=d,
    )
    csr.unlink()
    ext.unlink()
    return crt, key


# --------------------------------------------------------------------------
# helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    # webhooks and etcd are on loopback: never route them through a proxy
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:  # not Linux / no libc: children just don't die with us
        return None


# looked up once here: the child between fork and exec must not import anything
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the process that started it dies (even by
    SIGKILL), so a crashed test run leaves no etcd/apiserver behind."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _opener(ca_file: str | None) -> urllib.request.OpenerDirector:
    ctx = (
        ssl.create_default_context(cafile=ca_file) if ca_file else ssl._create_unverified_context()
    )
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


def _spawn(name: str, argv: Sequence[str], workdir: Path) -> _Proc:
    log = workdir / f"{name}.log"
    with open(log, "ab") as f:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=_child_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return _Proc(name, popen, log)


def _wait_ready(
    proc: _Proc,
    url: str,
    deadline_s: float,
    opener: urllib.request.OpenerDirector,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``url`` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while True:
        if proc.popen.poll() is not None:
            raise ClusterError(
                f"{proc.name} exited with code {proc.popen.returncode} before it was ready; "
                f"log {proc.log}:\n{_tail(proc.log)}"
            )
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with opener.open(req, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{proc.name} not ready at {url} within {deadline_s:.0f}s (last: {last}); "
                f"log {proc.log}:\n{_tail(proc.log)}"
            )
        time.sleep(0.05)  # poll interval


def _stop_procs(procs: list[_Proc], timeout: float = 15.0) -> None:
    for p in reversed(procs):
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.terminate()
        try:
            p.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(timeout=timeout)


# --------------------------------------------------------------------------
# the cluster


@dataclass
class Cluster:
    """A running etcd + kube-apiserver + kube-controller-manager."""

    workdir: Path
    server: str  # https://127.0.0.1:<port>
    kubeconfig: Path  # token auth, CA file path
    token: str  # bearer token of ADMIN_USER (group system:masters)
    ca_file: Path  # CA that signed the API server's serving cert (PEM)
    ca_key_file: Path  # its private key (for issue_serving_cert)
    sa_key_file: Path  # service-account signing key (RSA, PEM)
    sa_pub_file: Path
    ports: dict[str, int]  # etcd, etcd_peer, apiserver, controller_manager
    logs: dict[str, Path]  # process name -> log file
    _procs: list[_Proc] = field(default_factory=list, repr=False)

    # -- lifecycle --
    def stop(self) -> None:
        """Terminate controller-manager, apiserver and etcd (idempotent)."""
        _stop_procs(self._procs)
        self._procs.clear()

    def running(self) -> bool:
        return bool(self._procs) and all(p.popen.poll() is None for p in self._procs)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- conveniences --
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def issue_serving_cert(
        self, name: str, hosts: Iterable[str] = ("127.0.0.1", "localhost"), out_dir=None
    ) -> tuple[Path, Path]:
        """Serving cert for e.g. a webhook, signed by ``ca_file`` (use it as caBundle)."""
        return issue_serving_cert(
            self.ca_file, self.ca_key_file, out_dir or self.workdir / "issued", name, hosts
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 10,
    ) -> tuple[int, Any]:
        """One REST call as the admin user. Returns (status, decoded JSON body or text);
        HTTP errors are returned, not raised."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        try:
            with _opener(str(self.ca_file)).open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


def start_cluster(
    workdir: os.PathLike | str,
    *,
    controllers: str = "*",
    timeout: float = 60.0,
    build: bool | None = None,
    extra_apiserver_args: Sequence[str] = (),
    attempts: int = 3,
) -> Cluster:
    """Start etcd, kube-apiserver and kube-controller-manager on 127.0.0.1.

    All state (etcd data, certs, keys, token file, kubeconfig, logs) goes in
    ``workdir``. Ports are picked free. Returns once /readyz of the API server
    and /healthz of the controller-manager answer 200 (typically ~2-3 s),
    raising ClusterError with the log tail otherwise. ``build``: see
    find_binaries. A port race is retried up to ``attempts`` times.
    """
    bins = find_binaries(build=build)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        run_dir = workdir if attempt == 1 else workdir / f"retry{attempt}"
        try:
            return _start(run_dir, bins, controllers, timeout, extra_apiserver_args)
        except ClusterError as e:
            last = e
            if "address already in use" not in str(e).lower():
                raise
    raise ClusterError(f"could not start the cluster after {attempts} attempts: {last}")


def _start(
    workdir: Path,
    bins: dict[str, str],
    controllers: str,
    timeout: float,
    extra_apiserver_args: Sequence[str],
) -> Cluster:
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    pki.mkdir(exist_ok=True)

    ca_crt, ca_key = _make_ca(pki)
    api_crt, api_key = issue_serving_cert(
        ca_crt,
        ca_key,
        pki,
        "apiserver",
        hosts=(
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
    )
    sa_key, sa_pub = pki / "sa.key", pki / "sa.pub"
    _openssl("genrsa", "-out", str(sa_key), "2048", cwd=pki)
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=pki)

    token = secrets.token_hex(24)
    token_file = pki / "tokens.csv"
    token_file.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    token_file.chmod(0o600)

    ports = {
        "etcd": _free_port(),
        "etcd_peer": _free_port(),
        "apiserver": _free_port(),
        "controller_manager": _free_port(),
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: tidings-test\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority: {ca_crt}\n"
        "users:\n"
        f"- name: {ADMIN_USER}\n"
        "  user:\n"
        f"    token: {token}\n"
        "contexts:\n"
        "- name: tidings-test\n"
        "  context:\n"
        "    cluster: tidings-test\n"
        f"    user: {ADMIN_USER}\n"
        "    namespace: default\n"
        "current-context: tidings-test\n"
    )
    kubeconfig.chmod(0o600)

    procs: list[_Proc] = []
    try:
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        etcd = _spawn(
            "etcd",
            [
                bins["etcd"],
                "--name",
                "tidings",
                "--data-dir",
                str(workdir / "etcd-data"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"tidings={peer_url}",
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ],
            workdir,
        )
        procs.append(etcd)
        plain = _opener(None)
        _wait_ready(etcd, f"{etcd_url}/health", timeout, plain)

        apiserver = _spawn(
            "kube-apiserver",
            [
                bins["kube-apiserver"],
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(ports["apiserver"]),
                "--cert-dir",
                str(pki),
                "--tls-cert-file",
                str(api_crt),
                "--tls-private-key-file",
                str(api_key),
                "--client-ca-file",
                str(ca_crt),
                "--token-auth-file",
                str(token_file),
                "--authorization-mode",
                "Node,RBAC",
                "--service-account-key-file",
                str(sa_pub),
                "--service-account-signing-key-file",
                str(sa_key),
                "--service-account-issuer",
                SA_ISSUER,
                "--api-audiences",
                SA_ISSUER,
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--enable-admission-plugins",
                "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                "--disable-admission-plugins",
                "ServiceAccount",
                # the "kubernetes" Service's endpoints would point at 127.0.0.1,
                # which is invalid for Endpoints: don't reconcile them
                "--endpoint-reconciler-type",
                "none",
                # a webhook that names a Service (the chart's) is called at one of the Service's
                # Endpoints: without kube-proxy nothing here routes a ClusterIP
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                "--profiling=false",
                "--v",
                "1",
                *extra_apiserver_args,
            ],
            workdir,
        )
        procs.append(apiserver)
        api_opener = _opener(str(ca_crt))
        auth = {"Authorization": f"Bearer {token}"}
        _wait_ready(apiserver, f"{server}/readyz", timeout, api_opener, auth)

        kcm = _spawn(
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                "--kubeconfig",
                str(kubeconfig),
                "--authentication-kubeconfig",
                str(kubeconfig),
                "--authorization-kubeconfig",
                str(kubeconfig),
                # the API server has no front-proxy (requestheader) CA to look up
                "--authentication-skip-lookup=true",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(ports["controller_manager"]),
                "--port",
                "0",
                "--cert-dir",
                str(workdir / "kcm-certs"),
                "--controllers",
                controllers,
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--service-account-private-key-file",
                str(sa_key),
                "--root-ca-file",
                str(ca_crt),
                "--cluster-signing-cert-file",
                str(ca_crt),
                "--cluster-signing-key-file",
                str(ca_key),
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--profiling=false",
                "--v",
                "1",
            ],
            workdir,
        )
        procs.append(kcm)
        _wait_ready(kcm, f"https://127.0.0.1:{ports['controller_manager']}/healthz", timeout, plain)
    except BaseException:
        _stop_procs(procs)
        raise

    cluster = Cluster(
        workdir=workdir,
        server=server,
        kubeconfig=kubeconfig,
        token=token,
        ca_file=ca_crt,
        ca_key_file=ca_key,
        sa_key_file=sa_key,
        sa_pub_file=sa_pub,
        ports=ports,
        logs={p.name: p.log for p in procs},
        _procs=procs,
    )
    atexit.register(cluster.stop)
    return cluster


# --------------------------------------------------------------------------
# an existing cluster


def external_cluster(env: dict[str, str] | None = None, timeout: float = 3.0) -> str | None:
    """The $KUBECONFIG path if it points at a reachable API server, else None.

    Callers should then use that cluster instead of starting one. Best effort
    without a YAML library: reads the current context's cluster ``server``
    (via PyYAML/JSON when available, else the first ``server:`` line) and
    checks that something answers HTTPS there (any HTTP status counts).
    Set TIDINGS_IGNORE_KUBECONFIG=1 to always get None.
    """
    env = os.environ if env is None else env
    if env.get("TIDINGS_IGNORE_KUBECONFIG") == "1":
        return None
    for path in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if not path or not os.path.isfile(path):
            continue
        server = _kubeconfig_server(Path(path))
        if server and _reachable(server, timeout):
            return path
    return None


def _kubeconfig_server(path: Path) -> str | None:
    text = path.read_text(errors="replace")
    doc = None
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml  # type: ignore

            doc = yaml.safe_load(text)
        except Exception:
            doc = None
    if isinstance(doc, dict):
        try:
            ctx_name = doc.get("current-context")
            ctx = next(c["context"] for c in doc.get("contexts", []) if c.get("name") == ctx_name)
            cl = next(
                c["cluster"] for c in doc.get("clusters", []) if c.get("name") == ctx["cluster"]
            )
            return cl.get("server")
        except (StopIteration, KeyError, TypeError, AttributeError):
            clusters = doc.get("clusters") or []
            if clusters and isinstance(clusters[0], dict):
                return (clusters[0].get("cluster") or {}).get("server")
            return None
    m = re.search(r"^\s*server:\s*['\"]?([^\s'\"]+)", text, re.M)
    return m.group(1) if m else None


def _reachable(server: str, timeout: float) -> bool:
    try:
        with _opener(None).open(server.rstrip("/") + "/version", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # an API server answered (401/403 are fine)
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m tests.cluster.apiserver",
        description="Start etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 "
        "and keep them running until Ctrl-C / SIGTERM.",
    )
    ap.add_argument("--workdir", help="state directory (default: a new temp dir)")
    ap.add_argument("--no-build", action="store_true", help="fail instead of running build.sh")
    args = ap.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tidings-kube-"))
    t0 = time.monotonic()
    cluster = start_cluster(workdir, build=False if args.no_build else None)
    print(f"cluster ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    print(f"server:     {cluster.server}", file=sys.stderr)
    print(f"token:      {cluster.token}", file=sys.stderr)
    print(f"ca:         {cluster.ca_file}", file=sys.stderr)
    print(f"logs:       {workdir}/*.log", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)

    stop = {"now": False}

    def _handler(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    try:
        while not stop["now"]:
            if not cluster.running():
                print("a control-plane process exited; see the logs", file=sys.stderr)
                return 1
            time.sleep(0.5)  # watchdog interval; signals set stop["now"]
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
