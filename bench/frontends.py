"""The front-ends under test, each a TLS listener on loopback in front of one registry.

- `gateway`: `python -m gateway serve`, as a user runs it.
- `gateway-metrics`: the same with `metrics_listen` on, to measure what the
  metrics cost per request.
- `gateway-aiohttp`: the gateway with `fast_path = false`, every request served
  by aiohttp's server and client, to measure what the fast path saves.
- `nginx`: the distribution project's nginx recipe (docs/content/recipes/nginx.md)
  plus the tuning a careful operator adds: request bodies streamed
  (`proxy_request_buffering off`), responses buffered in memory only
  (`proxy_max_temp_file_size 0`), HTTP/1.1 keep-alive to the upstream, no access
  log, one worker per core. The recipe as written spools every upload to disk
  and is available as the target `nginx-recipe`.
- `haproxy`: HAProxy in HTTP mode with TLS, when installed.

Every front-end serves the same leaf certificate, so one CA file serves every client.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from gateway import lab

ROOT = Path(__file__).resolve().parent.parent

NGINX_TUNING = """
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
"""

NGINX_CONF = """
worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {access_log};
    client_body_temp_path {work}/client_body_temp;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;

    upstream docker-registry {{
        server {upstream};
        {keepalive}
    }}
    map $upstream_http_docker_distribution_api_version $docker_distribution_api_version {{
        '' 'registry/2.0';
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers 'EECDH+AESGCM:EDH+AESGCM:AES256+EECDH:AES256+EDH';
        ssl_prefer_server_ciphers on;
        ssl_session_cache shared:SSL:10m;
        client_max_body_size 0;
        chunked_transfer_encoding on;

        location /v2/ {{
            if ($http_user_agent ~ "^(docker\\/1\\.(3|4|5(?!\\.[0-9]-dev))|Go ).*$" ) {{
                return 404;
            }}
            add_header 'Docker-Distribution-Api-Version' $docker_distribution_api_version always;
            proxy_pass http://docker-registry;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 900;
{tuning}
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    maxconn 4096
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 10s
    timeout client 900s
    timeout server 900s
    option http-keep-alive
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    option forwardfor
    default_backend registry
backend registry
    http-reuse safe
    server registry {upstream}
"""


@dataclass
class Frontend:
    """A running front-end: its name, port, root process and spool folders."""

    name: str
    port: int
    process: subprocess.Popen | None = None
    spool_folders: list[Path] = field(default_factory=list)
    gateway: lab.GatewayProcess | None = None
    log_file: object = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            return
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()


def available(name: str) -> bool:
    binary = {"nginx": "nginx", "nginx-recipe": "nginx", "haproxy": "haproxy"}.get(name)
    return binary is None or shutil.which(binary) is not None


def start(
    name: str,
    work: Path,
    upstream: str,
    cert: Path,
    key: Path,
    gateway_config: Path | None = None,
    gateway_revision: str | None = None,
) -> Frontend:
    """Start the front-end `name` on a free loopback port in front of `upstream`."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "gateway-metrics" and gateway_config is None:
        gateway_config = folder / "metrics.toml"
        gateway_config.write_text('metrics_listen = "127.0.0.1:0"\n')
    if name == "gateway-aiohttp" and gateway_config is None:
        gateway_config = folder / "aiohttp.toml"
        gateway_config.write_text("fast_path = false\n")
    if name.startswith("gateway"):
        if gateway_revision is not None:
            _export_gateway(gateway_revision, folder)
        return _start_gateway(name, folder, upstream, cert, key, gateway_config)
    if name in ("nginx", "nginx-recipe"):
        return _start_nginx(name, folder, upstream, cert, key, tuned=name == "nginx")
    if name == "haproxy":
        return _start_haproxy(folder, upstream, cert, key)
    raise ValueError(f"unknown front-end {name!r}")


def _export_gateway(revision: str, folder: Path) -> None:
    """Write the `gateway` package as of git `revision` into `folder`.

    The gateway runs as `python -m gateway` with `folder` as its working folder,
    and Python puts that folder first on sys.path, so the exported package is the
    one that runs. This lets one run compare the gateway before and after a change.
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "gateway"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {revision} failed: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")


def _start_gateway(name, folder, upstream, cert, key, config_path) -> Frontend:
    port = lab.free_port()
    args = [
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream,
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--name",
        "localhost",
    ]
    if config_path is not None:
        args = ["--config", str(config_path), *args]
    process = lab.GatewayProcess(args, cwd=folder).start()
    return Frontend(name, port, process.process, [], gateway=process)


def _start_nginx(name, folder, upstream, cert, key, tuned: bool) -> Frontend:
    port = lab.free_port()
    spool = [folder / "client_body_temp", folder / "proxy_temp"]
    for path in spool:
        path.mkdir(exist_ok=True)
    text = NGINX_CONF.format(
        work=folder,
        port=port,
        upstream=upstream.removeprefix("http://"),
        cert=cert,
        key=key,
        access_log="off" if tuned else f"{folder}/access.log",
        keepalive="keepalive 32;" if tuned else "",
        tuning=NGINX_TUNING if tuned else "",
    )
    conf = folder / "nginx.conf"
    conf.write_text(text)
    log = open(folder / "stderr.log", "wb")
    process = subprocess.Popen(
        ["nginx", "-p", str(folder), "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    lab.wait_for_port("127.0.0.1", port, process, folder / "error.log")
    return Frontend(name, port, process, spool, log_file=log)


def _start_haproxy(folder, upstream, cert, key) -> Frontend:
    port = lab.free_port()
    pem = folder / "combined.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    pem.chmod(0o600)
    conf = folder / "haproxy.cfg"
    conf.write_text(
        HAPROXY_CONF.format(port=port, pem=pem, upstream=upstream.removeprefix("http://"))
    )
    log = open(folder / "stderr.log", "wb")
    process = subprocess.Popen(
        ["haproxy", "-W", "-db", "-f", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    lab.wait_for_port("127.0.0.1", port, process, folder / "stderr.log")
    return Frontend("haproxy", port, process, [], log_file=log)
