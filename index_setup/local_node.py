"""A local Elasticsearch 8 for machines without Docker: obtain, configure, start, stop one node or a cluster.

The pinned distribution is the official ``integ-test-zip`` that Elastic publishes on Maven Central (the
distribution Elasticsearch's own REST tests run on). It has no bundled JDK, so it runs on the machine's Java
17+. It lacks some modules of the full product (no ``GET /``, no scripting, no ``_reindex``), which is why the
rest of the project uses cluster health, ``_nodes/_local``, and scan + bulk. ``distribution=`` also accepts
an official full 8.x archive or unpacked folder.

`LocalCluster` runs several such nodes on loopback as one cluster (consecutive HTTP ports, transport ports 100
above them, one data folder per node), for trying a cluster setup and for tests.

A single node can also run with security on (``secure=True``): TLS on HTTP with a certificate from a CA of its
own (both made with the distribution's ``elasticsearch-certutil``) and a file-realm user with a generated
password (``elasticsearch-users``). The CA and the credentials are kept under ``cache_dir/elasticsearch/
security-<port>`` and reused by every later start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

ES_VERSION = "8.19.21"
MAVEN_GROUP = "org.elasticsearch.distribution.integ-test-zip"
MAVEN_ARTIFACT = "elasticsearch"
MAVEN_REPOSITORY = "https://repo.maven.apache.org/maven2"
# SHA-512 that Maven Central publishes beside the pinned zip; checked whichever way the zip was fetched.
DISTRIBUTION_SHA512 = (
    "cf6b0a93860d329937ae7f913ec5073b0c726c77639764b93fc83a304aa1dd9d"
    "4defcfa2849948eea3b0b47c2065f994908603939fc2a4774c9c4d868c5ec1dd"
)
CLUSTER_NAME = "imgsearch-local"
# The node refuses to run as root; as root we run it as this user, which every Linux system has.
UNPRIVILEGED_USER = "nobody"
MIN_JAVA = 17
# The file-realm user of a secure local node. superuser: the node is the caller's own, and every command
# (index creation, aliases, write blocks, scans, deletes) must work against it.
SECURE_USERNAME = "imgsearch"
SECURE_ROLE = "superuser"
# Where the node's own certificate, key and CA copy live, relative to its config folder (where the node
# resolves relative certificate paths).
NODE_CERTS = "certs"


class NodeError(Exception):
    """The local node could not be obtained, started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class NodeStatus:
    url: str
    pid: int | None
    running: bool
    version: str | None = None
    health: str | None = None


@dataclass(frozen=True)
class ClusterStatus:
    """A local cluster: each node's status, and the cluster's view (from any node that answers)."""

    name: str
    nodes: list[NodeStatus]
    health: str | None = None
    number_of_nodes: int = 0
    master: str | None = None  # the elected master's HTTP URL
    shards: dict[str, int] = field(default_factory=dict)  # active, unassigned...

    @property
    def running(self) -> list[NodeStatus]:
        return [n for n in self.nodes if n.running]


@dataclass(frozen=True)
class NodeCredentials:
    """How to reach a secure local node: the values of ES_URL, ES_USERNAME, ES_PASSWORD and ES_CA_CERTS."""

    url: str
    username: str
    password: str
    ca_certs: str

    def env_lines(self) -> list[str]:
        """NAME=value lines that a shell can source or eval (values quoted where a shell needs it)."""
        values = {"ES_URL": self.url, "ES_USERNAME": self.username, "ES_PASSWORD": self.password,
                  "ES_CA_CERTS": self.ca_certs}
        return [f"{name}={shlex.quote(value)}" for name, value in values.items()]

    @classmethod
    def parse(cls, text: str) -> NodeCredentials | None:
        values = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                values[name.strip()] = "".join(shlex.split(value))
        try:
            return cls(values["ES_URL"], values["ES_USERNAME"], values["ES_PASSWORD"], values["ES_CA_CERTS"])
        except KeyError:
            return None


def maven_url(version: str = ES_VERSION) -> str:
    path = MAVEN_GROUP.replace(".", "/")
    return f"{MAVEN_REPOSITORY}/{path}/{MAVEN_ARTIFACT}/{version}/{MAVEN_ARTIFACT}-{version}.zip"


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_with_maven(target: Path) -> bool:
    """Fetch the pinned zip with mvn (strict checksums); False when mvn is missing or fails."""
    mvn = shutil.which("mvn")
    if not mvn:
        return False
    artifact = f"{MAVEN_GROUP}:{MAVEN_ARTIFACT}:{ES_VERSION}:zip"
    cmd = [mvn, "-q", "-B", "--strict-checksums", "dependency:copy", f"-Dartifact={artifact}",
           f"-DoutputDirectory={target.parent}", "-Dmdep.overWriteReleases=true"]
    logger.info("Fetching Elasticsearch %s with Maven", ES_VERSION)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=target.parent)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("mvn could not fetch Elasticsearch (%s); downloading it directly", exc)
        return False
    if result.returncode != 0 or not target.exists():
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        logger.warning("mvn could not fetch Elasticsearch (%s); downloading it directly", " / ".join(tail))
        return False
    return True


def _download_direct(target: Path) -> None:
    url = maven_url()
    logger.info("Downloading Elasticsearch %s from %s", ES_VERSION, url)
    partial = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        raise NodeError(f"could not download Elasticsearch from {url}: {exc}") from exc
    partial.replace(target)


def obtain_distribution(cache_dir: Path) -> Path:
    """Return the verified pinned zip in the cache, fetching it (Maven if present, else HTTPS) when missing."""
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / f"{MAVEN_ARTIFACT}-{ES_VERSION}.zip"
    if target.exists() and sha512_of(target) == DISTRIBUTION_SHA512:
        return target
    target.unlink(missing_ok=True)
    if not _download_with_maven(target):
        _download_direct(target)
    actual = sha512_of(target)
    if actual != DISTRIBUTION_SHA512:
        target.unlink(missing_ok=True)
        raise NodeError(f"checksum mismatch for the downloaded Elasticsearch {ES_VERSION} zip "
                        f"(SHA-512 {actual[:16]}…, expected {DISTRIBUTION_SHA512[:16]}…); it was deleted")
    return target


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack an Elasticsearch zip or tar.gz into dest and return its home folder (the one with bin/)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                extracted = Path(zf.extract(info, tmp))
                mode = (info.external_attr >> 16) & 0o777
                if mode:  # zipfile drops Unix modes; the launch scripts need their exec bits
                    extracted.chmod(mode)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="tar")
    else:
        raise NodeError(f"{archive}: expected an Elasticsearch .zip or .tar.gz")
    homes = [p.parent.parent for p in tmp.glob("*/bin/elasticsearch")]
    if len(homes) != 1:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NodeError(f"{archive} does not look like an Elasticsearch distribution (no */bin/elasticsearch)")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest / homes[0].name


def find_java(es_home: Path | None = None) -> str | None:
    """The JAVA home to run the node with, or None when a distribution's bundled JDK should be used."""
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            return os.environ[var]
    if es_home is not None and (es_home / "jdk" / "bin" / "java").exists():
        return None
    java = shutil.which("java")
    if not java:
        raise NodeError("no Java found: Elasticsearch needs Java 17 or newer. Install one (Debian: "
                        "apt-get install openjdk-17-jre-headless) or point ES_JAVA_HOME at it.")
    return str(Path(os.path.realpath(java)).parent.parent)


def java_major(java_home: str) -> int:
    java = Path(java_home) / "bin" / "java"
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except OSError as exc:
        raise NodeError(f"cannot run {java}: {exc}; point ES_JAVA_HOME at a Java 17+ home") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise NodeError(f"cannot tell the version of {java}; point ES_JAVA_HOME at a Java 17+ home")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def http_json(url: str, timeout: float = 5.0, credentials: NodeCredentials | None = None) -> dict | None:
    """GET a JSON document from the local node, None when nothing answers (or answers with an error). With
    credentials, over https trusting only their CA, with their user."""
    request = urllib.request.Request(url)
    context = None
    if credentials is not None:
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=credentials.ca_certs)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read())
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return None


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, never (even briefly) by anyone else."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # the file may have existed with a wider mode
        f.write(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed daemon stays a zombie until someone reaps it (in a container, often nobody)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LocalNode:
    """One local node: its files live under ``cache_dir/elasticsearch/node-<port>``.

    With ``cluster_ports`` (the HTTP ports of every member, this one included) it is a member of a local cluster
    instead: its files live under ``cache_dir/elasticsearch/cluster-<first port>/node-<port>``, and it finds the
    others on their transport ports (HTTP port + 100).

    ``secure`` is how `start` runs the node: with security on (https, a password) or off. `status` and `stop`
    follow the way the node was last started, whatever ``secure`` says.
    """

    def __init__(self, cache_dir: str | Path, *, port: int = 9200, heap: str = "1g",
                 distribution: str | Path | None = None, cluster_ports: Sequence[int] = (),
                 secure: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.port = int(port)
        self.heap = heap
        self.distribution = Path(distribution) if distribution else None
        self.base = self.cache_dir / "elasticsearch"
        self.cluster_ports = tuple(int(p) for p in cluster_ports) if len(cluster_ports) > 1 else ()
        if secure and self.cluster_ports:
            raise ValueError("security is set up for a single local node, not for a member of a local cluster")
        self.secure = secure
        if self.cluster_ports:
            if self.port not in self.cluster_ports:
                raise ValueError(f"port {self.port} is not one of the cluster's ports {self.cluster_ports}")
            first = min(self.cluster_ports)
            self.cluster_name = f"{CLUSTER_NAME}-{first}"
            self.node_dir = self.base / f"cluster-{first}" / f"node-{self.port}"
        else:
            self.cluster_name = CLUSTER_NAME
            self.node_dir = self.base / f"node-{self.port}"
        self.pid_file = self.node_dir / "es.pid"
        # Kept outside node_dir, which belongs to the node's (unprivileged) user when we are root: the CA key
        # and the password stay readable by the caller only.
        self.security_dir = self.base / f"security-{self.port}"
        self.credentials_file = self.security_dir / "credentials.env"
        self.ca_cert = self.security_dir / "ca.crt"
        self._ca_key = self.security_dir / "ca.key"
        self._runs_secure = self._configured_secure()

    @property
    def url(self) -> str:
        return f"{'https' if self._runs_secure else 'http'}://127.0.0.1:{self.port}"

    def credentials(self) -> NodeCredentials | None:
        """How to reach this node when it was started secure (None when it never was)."""
        try:
            return NodeCredentials.parse(self.credentials_file.read_text())
        except OSError:
            return None

    # -- public ------------------------------------------------------------------------------------------------
    def status(self) -> NodeStatus:
        pid = self._read_pid()
        running = pid is not None and _pid_alive(pid)
        health = self._get("/_cluster/health") if running else None
        version = None
        if health:
            nodes = self._get("/_nodes/_local?filter_path=nodes.*.version") or {}
            versions = [n.get("version") for n in nodes.get("nodes", {}).values()]
            version = versions[0] if versions else None
        return NodeStatus(self.url, pid if running else None, running,
                          version, health.get("status") if health else None)

    def start(self, timeout: float = 180.0) -> NodeStatus:
        """Start the node (or reuse the running one) and return once its cluster is yellow or green."""
        current = self.status()
        if current.running and self._runs_secure != self.secure:
            now, wanted = ("on", "off") if self._runs_secure else ("off", "on")
            raise NodeError(f"the local node at {self.url} (pid {current.pid}) runs with security {now}; stop it "
                            f"(imgsearch es stop --port {self.port}) to start it with security {wanted}")
        if current.running and current.health in ("green", "yellow"):
            logger.info("Elasticsearch is already running at %s (pid %s)", self.url, current.pid)
            return current
        if current.running:
            return self._wait_healthy(current.pid, timeout)
        plain_url = f"http://127.0.0.1:{self.port}"
        if http_json(f"{plain_url}/_cluster/health", timeout=2) is not None:
            raise NodeError(f"port {self.port} already answers as an Elasticsearch this command did not start; "
                            f"use it with ES_URL={plain_url}, or pick another port")
        home = self._home()
        java_home = find_java(home)
        if java_home is not None and java_major(java_home) < MIN_JAVA:
            raise NodeError(f"{java_home} is Java {java_major(java_home)}; Elasticsearch 8 needs Java "
                            f"{MIN_JAVA}+ (set ES_JAVA_HOME to one)")
        env = {**os.environ, "ES_PATH_CONF": str(self.node_dir / "config")}
        env.pop("ES_JAVA_OPTS", None)
        if java_home is not None:
            env["ES_JAVA_HOME"] = java_home
        self._write_config(home, env)
        self.pid_file.unlink(missing_ok=True)
        cmd = [str(home / "bin" / "elasticsearch"), "-d", "-p", str(self.pid_file)]
        out_path = self.node_dir / "logs" / "launcher.out"
        logger.info("Starting Elasticsearch on %s (data in %s)", self.url, self.node_dir)
        with out_path.open("wb") as out:
            try:
                # -d returns once the node has started (or failed to); the node outlives this process.
                result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, timeout=timeout, start_new_session=True,
                                        **self._run_as())
            except subprocess.TimeoutExpired as exc:
                raise NodeError(f"Elasticsearch did not start within {timeout:.0f} s\n{self.log_tail()}") from exc
        if result.returncode != 0:
            raise NodeError(f"Elasticsearch failed to start (exit {result.returncode})\n{self.log_tail()}")
        return self._wait_healthy(self._read_pid(), timeout)

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the node; True when one was running."""
        pid = self._read_pid()
        if pid is None or not _pid_alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            logger.warning("Elasticsearch (pid %s) did not stop within %.0f s; killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        chunks = []
        for path in (self.node_dir / "logs" / "launcher.out", self.node_dir / "logs" / f"{self.cluster_name}.log"):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(chunks) or f"(no log in {self.node_dir / 'logs'})"

    def cache_size(self) -> int:
        return sum(p.stat().st_size for p in self.cache_dir.rglob("*") if p.is_file() and not p.is_symlink())

    # -- private -----------------------------------------------------------------------------------------------
    def _home(self) -> Path:
        if self.distribution is not None and self.distribution.is_dir():
            if not (self.distribution / "bin" / "elasticsearch").exists():
                raise NodeError(f"{self.distribution} has no bin/elasticsearch")
            return self.distribution
        archive = self.distribution or obtain_distribution(self.cache_dir)
        if not archive.exists():
            raise NodeError(f"{archive}: no such file")
        stem = archive.name.removesuffix(".zip").removesuffix(".tar.gz").removesuffix(".tgz")
        dest = self.base / "dist" / stem
        stamp = dest / ".unpacked"
        if stamp.exists():
            return Path(stamp.read_text())
        home = _unpack(archive, dest)
        self._make_readable(dest)
        stamp.write_text(str(home))
        return home

    def _write_config(self, home: Path, tool_env: dict[str, str]) -> None:
        config = self.node_dir / "config"
        if not config.exists():
            shutil.copytree(home / "config", config)
        for sub in ("data", "logs", "tmp"):
            (self.node_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.secure:
            self._set_up_security(home, tool_env)
        lines = [
            f"cluster.name: {self.cluster_name}",
            f"node.name: node-{self.port}",
            f"path.data: {self.node_dir / 'data'}",
            f"path.logs: {self.node_dir / 'logs'}",
            "network.host: 127.0.0.1",
            f"http.port: {self.port}",
            f"transport.port: {self.port + 100}",
            *self._discovery_config(),
            *self._security_config(),
            # A laptop disk that is 90 % full must not turn the indices read-only.
            "cluster.routing.allocation.disk.threshold_enabled: false",
            "action.destructive_requires_name: true",
        ]
        if (home / "modules" / "x-pack-ml").exists():  # the full distribution; ML needs more than we give it
            lines.append("xpack.ml.enabled: false")
        (config / "elasticsearch.yml").write_text("\n".join(lines) + "\n")
        self._runs_secure = self.secure
        (config / "jvm.options.d").mkdir(exist_ok=True)
        (config / "jvm.options.d" / "imgsearch.options").write_text(
            f"-Xms{self.heap}\n-Xmx{self.heap}\n-Djava.io.tmpdir={self.node_dir / 'tmp'}\n")
        if os.geteuid() == 0:
            self._check_reachable_by_unprivileged_user()
            self._chown_unprivileged(self.node_dir)

    def _discovery_config(self) -> list[str]:
        if not self.cluster_ports:
            return ["discovery.type: single-node"]
        seeds = ", ".join(f'"127.0.0.1:{p + 100}"' for p in self.cluster_ports)
        lines = [f"discovery.seed_hosts: [{seeds}]"]
        if not any((self.node_dir / "data").glob("*")):
            # Only to bootstrap a new cluster: a node that has joined one must not be told to form another.
            masters = ", ".join(f'"node-{p}"' for p in self.cluster_ports)
            lines.append(f"cluster.initial_master_nodes: [{masters}]")
        return lines

    def _security_config(self) -> list[str]:
        if not self.secure:
            # A throwaway node on loopback: no TLS or passwords (`secure` for both).
            return ["xpack.security.enabled: false"]
        return [
            "xpack.security.enabled: true",
            "xpack.security.http.ssl.enabled: true",
            f"xpack.security.http.ssl.certificate: {NODE_CERTS}/node.crt",
            f"xpack.security.http.ssl.key: {NODE_CERTS}/node.key",
            f"xpack.security.http.ssl.certificate_authorities: {NODE_CERTS}/ca.crt",
            # A single node talks to no other: its transport port (loopback only) carries no cluster traffic.
            "xpack.security.transport.ssl.enabled: false",
        ]

    def _configured_secure(self) -> bool:
        """Whether the node was last started with security on (its config says so)."""
        try:
            lines = (self.node_dir / "config" / "elasticsearch.yml").read_text().splitlines()
        except OSError:
            return False
        return "xpack.security.enabled: true" in lines

    def _set_up_security(self, home: Path, tool_env: dict[str, str]) -> None:
        """Make (once) the CA, the node's certificate and the user with its password; later starts reuse them."""
        self.security_dir.mkdir(parents=True, exist_ok=True)
        self.security_dir.chmod(0o700)
        certs = self.node_dir / "config" / NODE_CERTS
        certs.mkdir(exist_ok=True)
        if not (self.ca_cert.exists() and self._ca_key.exists()):
            files = self._certutil(home, tool_env, ["ca", "--ca-dn", f"CN=imgsearch local CA {self.port}"])
            _write_private(self._ca_key, files["ca.key"])
            self.ca_cert.write_bytes(files["ca.crt"])
            self.ca_cert.chmod(0o644)
        ca = self.ca_cert.read_bytes()
        node_ca = certs / "ca.crt"
        missing = not all((certs / name).exists() for name in ("node.key", "node.crt", "ca.crt"))
        if missing or node_ca.read_bytes() != ca:  # a new CA needs a node certificate signed by it
            files = self._certutil(home, tool_env, [
                "cert", "--name", "node", "--ca-cert", str(self.ca_cert), "--ca-key", str(self._ca_key),
                "--ip", "127.0.0.1,::1", "--dns", "localhost"])
            _write_private(certs / "node.key", files["node.key"])
            (certs / "node.crt").write_bytes(files["node.crt"])
            node_ca.write_bytes(ca)
        credentials = self.credentials()
        password = credentials.password if credentials else secrets.token_urlsafe(24)
        try:
            users = (self.node_dir / "config" / "users").read_text().splitlines()
        except FileNotFoundError:
            users = []
        known = any(line.split(":", 1)[0] == SECURE_USERNAME for line in users)
        if credentials is None or not known:
            # The password goes in on stdin (as the tool's prompt would read it), never on a command line.
            command = (["passwd", SECURE_USERNAME] if known else
                       ["useradd", SECURE_USERNAME, "--roles", SECURE_ROLE])
            self._run_tool(home, "elasticsearch-users", command, tool_env, stdin=f"{password}\n{password}\n")
        fresh = NodeCredentials(f"https://127.0.0.1:{self.port}", SECURE_USERNAME, password, str(self.ca_cert))
        if fresh != credentials:
            _write_private(self.credentials_file, ("\n".join(fresh.env_lines()) + "\n").encode())

    def _certutil(self, home: Path, tool_env: dict[str, str], args: list[str]) -> dict[str, bytes]:
        """Run elasticsearch-certutil with PEM output and return the files of the zip it writes, by name."""
        out = self.security_dir / "certutil-out.zip"
        out.unlink(missing_ok=True)
        try:
            self._run_tool(home, "elasticsearch-certutil", [*args, "--pem", "--silent", "--out", str(out)], tool_env)
            with zipfile.ZipFile(out) as zf:
                return {Path(name).name: zf.read(name) for name in zf.namelist() if not name.endswith("/")}
        finally:
            out.unlink(missing_ok=True)  # it holds a private key

    def _run_tool(self, home: Path, tool: str, args: list[str], env: dict[str, str], stdin: str = "") -> None:
        try:
            result = subprocess.run([str(home / "bin" / tool), *args], input=stdin, env=env, capture_output=True,
                                    text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NodeError(f"{tool} failed: {exc}") from exc
        if result.returncode != 0:
            tail = " / ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
            raise NodeError(f"{tool} {args[0]} failed (exit {result.returncode}): {tail}")

    def _get(self, path: str, timeout: float = 5.0) -> dict | None:
        return http_json(f"{self.url}{path}", timeout, self.credentials() if self._runs_secure else None)

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        import pwd

        user = pwd.getpwnam(UNPRIVILEGED_USER)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _check_reachable_by_unprivileged_user(self) -> None:
        for parent in self.node_dir.parents:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise NodeError(f"the node runs as '{UNPRIVILEGED_USER}', who cannot enter {parent}; set "
                                f"IMGSEARCH_CACHE_DIR to a folder outside it (as root the default is "
                                f"/var/cache/imgsearch)")

    @staticmethod
    def _chown_unprivileged(path: Path) -> None:
        import pwd

        user = pwd.getpwnam(UNPRIVILEGED_USER)
        for p in [path, *path.rglob("*")]:
            os.lchown(p, user.pw_uid, user.pw_gid)

    def _make_readable(self, path: Path) -> None:
        # The unpacked home stays owned by the caller; the unprivileged node user only reads it.
        for p in [self.cache_dir, self.base, path.parent, path, *path.rglob("*")]:
            mode = p.lstat().st_mode
            if p.is_dir():
                p.chmod(mode | 0o055)
            elif not p.is_symlink():
                p.chmod(mode | 0o044)

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_healthy(self, pid: int | None, timeout: float) -> NodeStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid is not None and not _pid_alive(pid):
                raise NodeError(f"Elasticsearch exited while starting\n{self.log_tail()}")
            health = self._get("/_cluster/health?wait_for_status=yellow&timeout=2s", timeout=5)
            if health and health.get("status") in ("green", "yellow"):
                return self.status()
            time.sleep(0.5)
        raise NodeError(f"Elasticsearch at {self.url} was not healthy within {timeout:.0f} s\n{self.log_tail()}")


class LocalCluster:
    """``nodes`` local nodes forming one cluster on loopback: HTTP ports ``port`` to ``port + nodes - 1``,
    transport ports 100 above them, each node with its own data folder. Every node is master-eligible and
    holds data, so the cluster survives the loss of any one of three."""

    def __init__(self, cache_dir: str | Path, *, nodes: int = 3, port: int = 9200, heap: str = "1g",
                 distribution: str | Path | None = None) -> None:
        if nodes < 2:
            raise ValueError("a cluster needs at least 2 nodes (use LocalNode for one)")
        ports = list(range(int(port), int(port) + int(nodes)))
        self.nodes = [LocalNode(cache_dir, port=p, heap=heap, distribution=distribution, cluster_ports=ports)
                      for p in ports]
        self.name = self.nodes[0].cluster_name
        self.cluster_dir = self.nodes[0].node_dir.parent

    @staticmethod
    def size_at(cache_dir: str | Path, port: int) -> int:
        """How many nodes the local cluster whose first HTTP port is ``port`` has (0: none was ever started)."""
        folder = Path(cache_dir) / "elasticsearch" / f"cluster-{int(port)}"
        return len(list(folder.glob("node-*"))) if folder.is_dir() else 0

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def es_url(self) -> str:
        """The value of ES_URL that names every node."""
        return ",".join(self.urls)

    def node(self, port: int) -> LocalNode:
        return next(n for n in self.nodes if n.port == port)

    def exists(self) -> bool:
        return self.cluster_dir.is_dir()

    def status(self) -> ClusterStatus:
        """Each node's pid, and from the first node that answers: health, members, master, shard counts. A node
        that runs but has not joined the cluster has no version or health."""
        nodes = [self._quick_status(n) for n in self.nodes]
        for node in (n for n in nodes if n.running):
            health = http_json(f"{node.url}/_cluster/health", timeout=5)
            if not health:
                continue
            info = http_json(f"{node.url}/_nodes?filter_path=nodes.*.name,nodes.*.version", timeout=5) or {}
            versions = {n.get("name"): n.get("version") for n in info.get("nodes", {}).values()}
            masters = http_json(f"{node.url}/_cat/master?format=json", timeout=5)
            master_name = masters[0].get("node") if isinstance(masters, list) and masters else None
            names = [f"node-{n.port}" for n in self.nodes]
            joined = [replace(status, version=versions.get(name), health=health.get("status") if name in versions
                              else None) for status, name in zip(nodes, names, strict=True)]
            master = next((n.url for n, name in zip(self.nodes, names, strict=True) if name == master_name), None)
            shards = {k.removesuffix("_shards"): int(v) for k, v in health.items()
                      if k.endswith("_shards") and isinstance(v, int)}
            return ClusterStatus(self.name, joined, health.get("status"), int(health.get("number_of_nodes", 0)),
                                 master, shards)
        return ClusterStatus(self.name, nodes)

    def start(self, timeout: float = 300.0) -> ClusterStatus:
        """Start every node that is not running (all at once: a master is elected once a majority is up), and
        return when all of them have joined and the cluster is yellow or green. Idempotent."""
        current = self.status()
        if len(current.running) == len(self.nodes) and self._formed(current):
            logger.info("The local cluster %s is already running (%s)", self.name, self.es_url)
            return current
        self.nodes[0]._home()  # unpack the distribution once, before the nodes start side by side
        pending = [n for n in self.nodes if not self._quick_status(n).running]
        logger.info("Starting %d Elasticsearch node(s) of the local cluster %s (%s)", len(pending), self.name,
                    ", ".join(n.url for n in pending))
        with ThreadPoolExecutor(max_workers=len(self.nodes), thread_name_prefix="es-start") as pool:
            futures = [pool.submit(node.start, timeout) for node in pending]
            errors = []
            for node, future in zip(pending, futures, strict=True):
                try:
                    future.result()
                except NodeError as exc:
                    errors.append(f"node {node.url}: {exc}")
        if errors:
            raise NodeError("the local cluster did not start:\n" + "\n".join(errors))
        return self.wait_formed(timeout)

    def wait_formed(self, timeout: float = 300.0) -> ClusterStatus:
        """Wait until every node has joined the cluster and it is yellow or green."""
        deadline = time.monotonic() + timeout
        wanted = len(self.nodes)
        while time.monotonic() < deadline:
            for node in self.nodes:
                health = http_json(f"{node.url}/_cluster/health?wait_for_nodes={wanted}&wait_for_status=yellow"
                                   f"&timeout=2s", timeout=5)
                if health and not health.get("timed_out") and health.get("status") in ("green", "yellow"):
                    return self.status()
            time.sleep(0.5)
        tails = "\n".join(n.log_tail(10) for n in self.nodes)
        raise NodeError(f"the local cluster {self.name} did not form within {timeout:.0f} s\n{tails}")

    def stop(self, timeout: float = 60.0) -> int:
        """Stop every node; returns how many were running."""
        with ThreadPoolExecutor(max_workers=len(self.nodes), thread_name_prefix="es-stop") as pool:
            return sum(pool.map(lambda node: node.stop(timeout), self.nodes))

    def _formed(self, status: ClusterStatus) -> bool:
        return status.health in ("green", "yellow") and status.number_of_nodes >= len(self.nodes)

    @staticmethod
    def _quick_status(node: LocalNode) -> NodeStatus:
        pid = node._read_pid()
        running = pid is not None and _pid_alive(pid)
        return NodeStatus(node.url, pid if running else None, running)
