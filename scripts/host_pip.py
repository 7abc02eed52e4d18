#!/usr/bin/env python3
"""Hand the host's pip configuration to an image build, without baking anything into a layer.

`make image` (scripts/image.sh) runs this beside the build: it reads the configuration the
host's pip actually uses (`pip config list`: files and PIP_* variables), and writes

- OUT/pip.conf: the same settings for the build, where every local index, wheel folder or
  constraint file (``file://`` URLs, plain paths) is replaced by an ``http://127.0.0.1:PORT``
  URL served by this process, and the CA certificate by ``/run/secrets/ca.crt``;
- OUT/secrets: one ``--secret`` value a line (``id=pip.conf,src=...``, ``id=ca.crt,src=...``)
  for docker, podman or buildah, which mount them at ``/run/secrets/ID`` for one RUN only.

It then serves exactly those local paths, read-only, on 127.0.0.1 until it is stopped; the
build reaches them over the host network (``--network host``). One mechanism for every engine:
docker builds have no bind mounts of host folders, and the wheel folders (GBs) are too big to
send as build contexts. OUT/ready appears once the server listens.

Usage: host_pip.py OUT
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import os
import subprocess
import sys
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["SECRET_DIR", "host_pip_config", "main", "rewrite", "serve"]

SECRET_DIR = "/run/secrets"
# Settings whose values name where packages or constraints come from: local ones are served.
SOURCE_KEYS = {"index-url", "extra-index-url", "find-links", "constraint", "requirement"}
# Index pages link to their files relatively (../../files/x.whl): serve the index's parent too.
INDEX_KEYS = {"index-url", "extra-index-url"}


def host_pip_config(python: str = sys.executable) -> dict[tuple[str, str], str]:
    """{(section, key): value} as the host's pip sees it; PIP_* variables override files."""
    try:
        listing = subprocess.run(
            [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}  # no pip on the host: the build uses pip's defaults (PyPI)
    from_files, from_env = {}, {}
    for line in listing.splitlines():
        name, sep, quoted = line.partition("=")
        if not sep:
            continue
        section, _, key = name.rpartition(".")
        value = str(ast.literal_eval(quoted))
        if section == ":env:":
            from_env[("global", key)] = value
        else:
            from_files[(section, key)] = value
    return from_files | from_env


def _local_path(token: str) -> Path | None:
    if token.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(token).path))
    if token.startswith("/"):
        return Path(token)
    return None


def rewrite(config: dict[tuple[str, str], str], base_url: str) -> tuple[dict, list[Path], Path | None]:
    """(build config, local paths to serve, CA certificate) for a build reaching base_url."""
    build: dict[tuple[str, str], str] = {}
    served: list[Path] = []
    cert = None
    for (section, key), value in config.items():
        if key == "cert":
            if Path(value).is_file():
                cert = Path(value)
                build[(section, key)] = f"{SECRET_DIR}/ca.crt"
            continue
        tokens = value.split()
        local = [_local_path(t) for t in tokens]
        if key not in SOURCE_KEYS:
            if not any(local):  # host-only paths (cache-dir, log, ...) mean nothing in a build
                build[(section, key)] = value
            continue
        out = []
        for token, path in zip(tokens, local, strict=True):
            if path is None:
                out.append(token)
            elif path.exists():
                served.append(path.parent if key in INDEX_KEYS and path.is_dir() else path)
                out.append(base_url + urllib.parse.quote(str(path)) + ("/" if path.is_dir() else ""))
        if out:
            build[(section, key)] = " ".join(out)
    return build, served, cert


def write_config(build: dict[tuple[str, str], str], path: Path) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    for (section, key), value in build.items():
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, key, value)
    with path.open("w") as f:
        parser.write(f)


def _handler(roots: list[Path]) -> type[SimpleHTTPRequestHandler]:
    allowed = [r.resolve() for r in roots]

    class Handler(SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            wanted = Path(os.path.normpath(urllib.parse.unquote(urllib.parse.urlsplit(path).path)))
            real = wanted.resolve()
            if any(real == r or r in real.parents for r in allowed):
                return str(wanted)
            return "/nonexistent/outside-the-served-folders"  # answered 404

        def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
            outputfile.flush()
            self.connection.sendfile(source)  # wheels are GBs: let the kernel copy them

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve(roots: list[Path]) -> ThreadingHTTPServer:
    """A server on a free 127.0.0.1 port answering only for roots (and what lies under them)."""
    return ThreadingHTTPServer(("127.0.0.1", 0), _handler(roots))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    server = serve([])
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    build, served, cert = rewrite(host_pip_config(), base_url)
    server.RequestHandlerClass = _handler(served)
    write_config(build, out / "pip.conf")
    secrets = [f"id=pip.conf,src={out / 'pip.conf'}"]
    if cert is not None:
        secrets.append(f"id=ca.crt,src={cert}")
    (out / "secrets").write_text("".join(s + "\n" for s in secrets))
    (out / "ready.tmp").write_text(base_url + "\n")
    (out / "ready.tmp").rename(out / "ready")  # seen complete or not at all
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
