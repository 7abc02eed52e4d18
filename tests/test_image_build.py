"""The helpers of `make image`: host pip settings handed to the build, and engine detection.

scripts/host_pip.py is run as the build runs it, with a pip configuration naming a local index
(``file://``), a local wheel folder, a CA certificate and a host-only cache folder; real pip
then downloads from what it serves. scripts/image.sh is run where the chosen engine cannot
work. The full build and the pipeline inside the image are `make image-check`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel pip accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def served(tmp_path: Path):
    """scripts/host_pip.py running on a host configuration of local sources; yields (out, tmp)."""
    index_wheel = _wheel(tmp_path / "repo" / "files", "geosegindexonly", "1.0")
    page = tmp_path / "repo" / "simple" / "geosegindexonly" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/{index_wheel.name}">{index_wheel.name}</a>\n')
    _wheel(tmp_path / "links", "geoseglinksonly", "2.0")
    (tmp_path / "ca.crt").write_text("not read by this test\n")
    host = tmp_path / "host.conf"
    host.write_text(
        "[global]\n"
        f"index-url = file://{tmp_path}/repo/simple\n"
        f"find-links = {tmp_path}/links\n"
        f"cert = {tmp_path}/ca.crt\n"
        f"cache-dir = {tmp_path}/cache\n"
        "timeout = 33\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": str(host)}
    out = tmp_path / "out"
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "host_pip.py"), str(out)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out / "ready").exists():
            assert server.poll() is None, "host_pip.py exited"
            assert time.monotonic() < deadline, "host_pip.py did not get ready"
            time.sleep(0.1)
        yield out, tmp_path, env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_build_config_replaces_local_sources_with_served_urls_and_the_cert_with_a_secret(served) -> None:
    out, tmp, _ = served
    base_url = (out / "ready").read_text().strip()
    config = ConfigParser(interpolation=None)
    config.read(out / "pip.conf")
    build = config["global"]
    assert build["index-url"] == f"{base_url}{tmp}/repo/simple/"
    assert build["find-links"] == f"{base_url}{tmp}/links/"
    assert build["cert"] == "/run/secrets/ca.crt"
    assert build["timeout"] == "33"
    assert "cache-dir" not in build, "a host-only folder must not reach the build"
    assert str(tmp) not in build.get("cert", "")
    secrets = (out / "secrets").read_text().splitlines()
    assert secrets == [f"id=pip.conf,src={out / 'pip.conf'}", f"id=ca.crt,src={tmp / 'ca.crt'}"]


def test_pip_installs_from_the_served_index_and_wheel_folder(served) -> None:
    out, tmp, env = served
    downloads = tmp / "downloads"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(downloads),
         "geosegindexonly==1.0", "geoseglinksonly==2.0"],
        env=env | {"PIP_CONFIG_FILE": str(out / "pip.conf")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    for got, original in (
        (downloads / "geosegindexonly-1.0-py3-none-any.whl", tmp / "repo" / "files"),
        (downloads / "geoseglinksonly-2.0-py3-none-any.whl", tmp / "links"),
    ):
        assert got.read_bytes() == (original / got.name).read_bytes()


def test_server_answers_only_for_the_configured_sources(served) -> None:
    out, tmp, _ = served
    base_url = (out / "ready").read_text().strip()
    with urllib.request.urlopen(f"{base_url}{tmp}/links/") as listing:
        assert b"geoseglinksonly-2.0-py3-none-any.whl" in listing.read()
    for outside in (f"{tmp}/host.conf", f"{tmp}/ca.crt", "/etc/passwd", f"{tmp}/links/../host.conf"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base_url + outside)
        assert refused.value.code == 404, outside


def test_make_image_without_a_working_engine_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A docker client whose daemon does not answer is not an engine (as on these machines)."""
    env = os.environ | {"ENGINE": "docker", "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    run = subprocess.run(
        [str(ROOT / "scripts" / "image.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "docker" in lines[0] and "apt-get install buildah" in lines[0], run.stderr
    assert run.stdout == ""
    unknown = subprocess.run(
        [str(ROOT / "scripts" / "image.sh")], env=os.environ | {"ENGINE": "kubectl"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0
    assert "ENGINE=kubectl" in unknown.stderr
