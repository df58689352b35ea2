"""A Google Cloud Storage emulator on 127.0.0.1, for tests that put a workdir on `gs://`.

This module owns the test double of GCS: it starts `gcp-storage-emulator`
(in memory) in a child process on a free loopback port with one bucket,
patches the emulator where the clients the project uses need real-GCS
behaviour, runs a TLS-terminating CONNECT proxy for TensorFlow's GCS
filesystem, says which environment variables point a *subprocess* at all of
it (`GcsEmulator.env`), lists, reads, writes, copies and deletes objects over
the emulator's JSON API, and stops it all. Nothing here is part of the package.

How each storage client of the project reaches the emulator:

* etils.epath's default `gs://` backend (TensorFlow's gfile when TensorFlow is
  installed, as in production), TensorBoard events (clu / tf.summary) and TFDS
  all go through TensorFlow's GCS filesystem. It has hard-coded
  `https://storage.googleapis.com` / `https://www.googleapis.com` endpoints and
  no emulator setting, but its libcurl honours `https_proxy` and
  `CURL_CA_BUNDLE`: the proxy answers `CONNECT *.googleapis.com:443`,
  terminates TLS with a throw-away CA made for this emulator, and relays the
  plain HTTP to the emulator.
* tensorstore (Orbax's arrays): `TENSORSTORE_GCS_HTTP_URL` and a fixed bearer
  token `GOOGLE_AUTH_TOKEN_FOR_TESTING` (which TensorFlow honours too).
* google-cloud-storage (Orbax's bucket lookup) and gcsfs (epath's fsspec
  backend, should it be selected): `STORAGE_EMULATOR_HOST`, anonymous.

Loopback only: the emulator and the proxy listen on 127.0.0.1; the proxy
tunnels only `*.googleapis.com` and only ever dials the emulator's loopback
port, and refuses everything else (403), including plain-HTTP proxy requests,
so a client that would reach for a metadata server or another host through
the proxy variables is answered locally. Credential discovery is switched off
(`NO_GCE_CHECK`, `CLOUDSDK_CONFIG` in a folder that does not exist, no
`GOOGLE_APPLICATION_CREDENTIALS`), so no real credentials can send a request
to real GCS.

Usage:

    with GcsEmulator() as gcs:
        subprocess.run(cmd, env=gcs.subprocess_env())
        names = gcs.list_objects("run/")
        gcs.write_object("run/x.bin", b"...")  # a test's own damage or input
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

BUCKET = "bucket"
# Files the child process writes into its folder (the proxy's throw-away CA and certificate).
_CA_FILE, _CERT_FILE, _KEY_FILE = "ca.pem", "leaf.pem", "leaf.key"
_GOOGLEAPIS = "googleapis.com"
# The test process talks to the emulator directly, whatever proxy variables it has.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class GcsEmulator:
    """gcp-storage-emulator + the TensorFlow proxy in a child process, with one bucket.

    Attributes:
      bucket: the bucket created at start (`gs://<bucket>/...`).
      url: `http://127.0.0.1:<port>`, the emulator's JSON/XML API.
      proxy_url: `http://127.0.0.1:<port>`, the CONNECT proxy for TensorFlow.
      ca_file: the PEM of the throw-away CA the proxy's certificate is signed with.
    """

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.url = ""
        self.proxy_url = ""
        self.ca_file = ""
        self._tmp = ""
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[bytes] | None = None

    # --------------------------------------------------------------------- lifecycle
    def start(self) -> GcsEmulator:
        """Starts the child process; returns once the emulator answers and the bucket exists.

        Raises:
          RuntimeError: the child process exited before it was ready (its log included).
        """
        self._tmp = tempfile.mkdtemp(prefix="gcs_emulator_")
        self._log = open(os.path.join(self._tmp, "emulator.log"), "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), self.bucket, self._tmp],
            stdin=subprocess.PIPE,  # the child exits when this closes (or the test dies)
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            self._proc.wait(timeout=10)
            raise RuntimeError(f"the GCS emulator did not start:\n{self.log_tail()}")
        info = json.loads(line)
        self.url = f"http://127.0.0.1:{info['port']}"
        self.proxy_url = f"http://127.0.0.1:{info['proxy_port']}"
        self.ca_file = os.path.join(self._tmp, _CA_FILE)
        self._get_json(f"/storage/v1/b/{self.bucket}")  # raises unless the bucket is there
        return self

    def stop(self) -> None:
        """Stops the child process (closing its stdin; killed after 10 s) and deletes its files."""
        if self._proc is not None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the child process's stderr (emulator and proxy errors)."""
        if not self._tmp:
            return ""
        try:
            with open(os.path.join(self._tmp, "emulator.log"), "rb") as f:
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    # --------------------------------------------------------------------- environment
    def env(self) -> dict[str, str]:
        """Variables a subprocess needs so that every storage client it uses reaches this emulator.

        Merge them over `os.environ` minus `GOOGLE_APPLICATION_CREDENTIALS` (see
        `subprocess_env`). They must be set before the subprocess imports fsspec or
        gcsfs, which read theirs at import, and before etils.epath first chooses a
        backend for `gs://` (cached), hence: for subprocesses.
        """
        no_proxy = "127.0.0.1,localhost"
        return {
            # google-cloud-storage (Orbax: bucket lookup) and gcsfs: the emulator, anonymous.
            "STORAGE_EMULATOR_HOST": self.url,
            "FSSPEC_GCS_TOKEN": "anon",
            # gcsfs >= 2026: its default ExtendedGcsFileSystem asks the gRPC Storage Control
            # API for the bucket layout (60 s timeout per call against an emulator).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # tensorstore's `gcs` driver (Orbax's arrays).
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            # tensorstore and TensorFlow: this bearer token, no credential discovery.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",
            # google-auth: no metadata-server probe; no gcloud credentials from the user.
            "NO_GCE_CHECK": "true",
            "CLOUDSDK_CONFIG": os.path.join(self._tmp, "gcloud"),
            # TensorFlow's GCS filesystem (epath's default backend, events, TFDS): through
            # the loopback proxy, trusting only its throw-away CA.
            "https_proxy": self.proxy_url,
            "HTTPS_PROXY": self.proxy_url,
            "http_proxy": self.proxy_url,  # plain HTTP to other hosts: refused by the proxy
            "HTTP_PROXY": self.proxy_url,
            "no_proxy": no_proxy,
            "NO_PROXY": no_proxy,
            "CURL_CA_BUNDLE": self.ca_file,
            # TF: fail fast rather than back off ten times; no 5 s stat cache (stale exists()).
            "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
            "GCS_STAT_CACHE_MAX_AGE": "0",
        }

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default `os.environ`) without real credentials, plus `env()`."""
        base = dict(os.environ if base is None else base)
        base.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        return {**base, **self.env()}

    # --------------------------------------------------------------------- objects
    def list_objects(self, prefix: str = "") -> list[str]:
        """Names of the bucket's objects under `prefix` (no `gs://bucket/`), sorted."""
        names: list[str] = []
        token = ""
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = self._get_json(f"/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def read_object(self, name: str) -> bytes:
        """The bytes of object `name` (no `gs://bucket/`)."""
        quoted = urllib.parse.quote(name, safe="")
        with _OPENER.open(
            f"{self.url}/storage/v1/b/{self.bucket}/o/{quoted}?alt=media", timeout=30
        ) as response:
            return response.read()

    def write_object(self, name: str, data: bytes) -> None:
        """Writes `data` as object `name` (no `gs://bucket/`), replacing any object of that name."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{self.bucket}/o?{query}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        with _OPENER.open(request, timeout=30):
            pass

    def copy_prefix(self, src: str, dst: str) -> list[str]:
        """Copies every object under prefix `src` to the same name under `dst`; their new names."""
        copied = []
        for name in self.list_objects(src):
            new = dst + name[len(src) :]
            self.write_object(new, self.read_object(name))
            copied.append(new)
        return copied

    def exists(self, name: str) -> bool:
        """Whether object `name` (no `gs://bucket/`) exists."""
        try:
            self._get_json(f"/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise
        return True

    def delete(self, name: str) -> None:
        """Deletes object `name` (no `gs://bucket/`)."""
        quoted = urllib.parse.quote(name, safe="")
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b/{self.bucket}/o/{quoted}", method="DELETE"
        )
        with _OPENER.open(request, timeout=30):
            pass

    def _get_json(self, path: str) -> Any:
        with _OPENER.open(self.url + path, timeout=30) as response:
            return json.loads(response.read())


# ============================================================================ child process
def _patch_emulator() -> None:
    """Makes gcp-storage-emulator behave like GCS where the project's clients depend on it."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    def query(request: Any, name: str) -> str | None:
        values = request.query.get(name)
        return values[0] if values else None

    def generation_of(storage: Any, bucket: str, name: str) -> dict | None:
        try:
            return storage.get_file_obj(bucket, name)
        except objects.NotFound:
            return None

    # Media downloads: real GCS sends x-goog-generation, which tensorstore takes as the
    # object's generation (then ifGenerationMatch of OCDBT manifest updates); without it
    # Orbax fails now and then with "Malformed StorageGeneration". The emulator also
    # ignores ifGenerationMatch / ifGenerationNotMatch on reads and inserts.
    original_download = objects.download

    def download(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        obj = generation_of(storage, request.params["bucket_name"], request.params["object_id"])
        if obj is not None:
            generation = str(obj.get("generation", ""))
            match = query(request, "ifGenerationMatch")
            if match is not None and match != generation:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
            not_match = query(request, "ifGenerationNotMatch")
            if not_match is not None and not_match == generation:
                response.status = HTTPStatus.NOT_MODIFIED
                return None
            response["x-goog-generation"] = generation
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return original_download(request, response, storage, *args, **kwargs)

    original_insert = objects.insert

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        # An empty media upload (TensorFlow's `dir/` markers, empty files) has no body:
        # the emulator would take len(None).
        if query(request, "uploadType") == "media" and request.get_header("Content-Length") == "0":
            request._data = b""
        match, name = query(request, "ifGenerationMatch"), query(request, "name")
        if match is not None and name is not None:
            obj = generation_of(storage, request.params["bucket_name"], name)
            if match != (str(obj.get("generation")) if obj is not None else "0"):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return original_insert(request, response, storage, *args, **kwargs)

    swap = {original_download: download, original_insert: insert}
    server.HANDLERS = tuple(
        (pattern, {method: swap.get(f, f) for method, f in routes.items()})
        for pattern, routes in server.HANDLERS
    )
    objects.download = download  # objects.get(alt=media) calls it by name

    # TensorFlow's libcurl sends both "Transfer-Encoding: chunked" and "Content-Length" on
    # resumable-upload PUTs; chunked wins (HTTP/1.1), the emulator would store the framing.
    original_read = server._read_raw_data

    def read_raw_data(handler: Any) -> bytes:
        if (handler.headers.get("Transfer-Encoding") or "").lower() != "chunked":
            return original_read(handler)
        raw = b""
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0] or b"0", 16)
            if size == 0:
                while handler.rfile.readline().strip():  # trailers
                    pass
                return raw
            raw += handler.rfile.read(size)
            handler.rfile.readline()

    server._read_raw_data = read_raw_data

    # libcurl (TensorFlow, tensorstore) sends "Expect: 100-continue" with uploads and waits
    # 1 s for "100 Continue" before the body; the HTTP/1.0 handler never sends it. (Speed
    # only: without it tests/test_gcs_workdir.py takes 1:48 instead of 1:11 on one core.)
    original_parse = server.RequestHandler.parse_request

    def parse_request(self: Any) -> bool:
        ok = original_parse(self)
        if ok and (self.headers.get("Expect") or "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        return ok

    server.RequestHandler.parse_request = parse_request

    # Real GCS returns https:// resumable-upload session URLs; the emulator builds them from
    # the Host header with http://. Keep https for googleapis hosts, so TensorFlow's PUT of
    # the body goes through the proxy as well.
    original_init = server.Request.__init__

    def request_init(self: Any, handler: Any, method: str) -> None:
        original_init(self, handler, method)
        host = handler.headers.get("Host") or ""
        if host.endswith(_GOOGLEAPIS):
            self._base_url = "https://" + host
            self._full_url = self._base_url + self._path

    server.Request.__init__ = request_init


def _write_certificates(folder: str) -> None:
    """A throw-away CA (2 days) and a `*.googleapis.com` certificate it signs, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=2)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("facegan test GCS emulator CA"))
        .issuer_name(name("facegan test GCS emulator CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    hosts = ["www.googleapis.com", "storage.googleapis.com", "*.googleapis.com"]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    for file_name, data in (
        (_CA_FILE, ca.public_bytes(pem)),
        (_CERT_FILE, leaf.public_bytes(pem)),
        (
            _KEY_FILE,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    ):
        with open(os.path.join(folder, file_name), "wb") as f:
            f.write(data)


def _start_proxy(folder: str, emulator_port: int) -> int:
    """The CONNECT proxy on 127.0.0.1 (TLS for `*.googleapis.com` -> the emulator); its port."""
    import select
    import socket
    import ssl
    import threading

    _write_certificates(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(folder, _CERT_FILE), os.path.join(folder, _KEY_FILE))

    def relay(client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host = target.rsplit(":", 1)[0]
            if method != "CONNECT" or not host.endswith(_GOOGLEAPIS):
                print(f"proxy: refused {method} {target}", file=sys.stderr, flush=True)
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = context.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", emulator_port))
            try:
                while True:
                    ready = (
                        [tls] if tls.pending() else select.select([tls, upstream], [], [], 120)[0]
                    )
                    if not ready:
                        return
                    if tls in ready:
                        data = tls.recv(65536)
                        if not data:
                            return
                        upstream.sendall(data)
                    if upstream in ready:
                        data = upstream.recv(65536)
                        if not data:  # the emulator speaks HTTP/1.0: one reply per connection
                            return
                        tls.sendall(data)
            finally:
                upstream.close()
                tls.close()
        except (OSError, ValueError):
            pass
        finally:
            client.close()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def _serve(bucket: str, folder: str) -> None:
    """Child process: emulator (+ bucket) and proxy; prints their ports; stops at stdin EOF."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    # Its "Resource not found" lines are the 404s clients expect (exists() checks).
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    _patch_emulator()
    from gcp_storage_emulator.server import create_server

    emulator = create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    emulator.start()
    try:
        port = emulator._api._httpd.server_address[1]  # chosen by the OS
        proxy_port = _start_proxy(folder, port)
        print(json.dumps({"port": port, "proxy_port": proxy_port}), flush=True)
        sys.stdin.read()  # EOF: the parent closed it or died
    finally:
        emulator.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
