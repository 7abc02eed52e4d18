"""The GPU worker image, checked without a Docker engine (there is none on these machines).

Static checks of the Dockerfile: geoseg is installed with the project's lock file, every
version it names is the locked one, its Python is Debian 12's 3.11 as pyproject allows, the
NVIDIA toolkit variables match the locked CUDA, dependencies are cached in a layer of their
own, host pip settings arrive only as build secrets, its default command exists in the
installed Prefect CLI with the options it passes, the geoseg sub-commands it runs exist, it
runs as a non-root user, and the build context keeps out what must not be baked in.
Building the image and running the pipeline inside it is `make image-check`
(scripts/image-check.sh, run by .ci/run); tests/test_image_build.py covers the build's
helpers. Not checked anywhere here: CUDA inside the container (no GPU).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from geoseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s else "") for s in logical]


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_installs() -> list[tuple[int, list[str]]]:
    """(instruction index, arguments) of every `pip install` command in a RUN."""
    found = []
    for i, (op, args) in enumerate(instructions()):
        if op != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = command.replace('"', "").replace("'", "").split()
            if "pip" in words and "install" in words:
                found.append((i, words[words.index("install") + 1 :]))
    return found


def test_install_line_uses_the_lock_file_copied_before_it() -> None:
    steps = instructions()
    project = [(i, a) for i, a in pip_installs() if any(w == "." or w.startswith(".[") for w in a)]
    assert len(project) == 1, "geoseg must be installed exactly once, with `pip install ... .`"
    for i, words in pip_installs():
        if words in (["--upgrade", "pip"], ["-U", "pip"]):
            continue
        joined = " ".join(words)
        assert re.search(r"(-c|--constraint)\s+constraints\.txt", joined), f"pip install {joined}"
        assert any(op == "COPY" and "constraints.txt" in a.split() for op, a in steps[:i]), (
            "constraints.txt is not copied before the install"
        )


def test_versions_named_in_the_dockerfile_are_the_locked_ones() -> None:
    pins = locked()
    text = (ROOT / "Dockerfile").read_text()
    named = re.findall(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([0-9][^\s\"']*)", text)
    for name, version in named:
        assert pins.get(_norm(name)) == version, (
            f"{name}=={version} but constraints.txt has {pins.get(_norm(name))}"
        )
    # The extra the image installs is locked too, so the image resolves only pinned versions.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for op, args in instructions():
        for extra in re.findall(r"\.\[([a-z0-9_,-]+)\]", args) if op == "RUN" else []:
            for group in extra.split(","):
                for requirement in extras[group]:
                    name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)  # type: ignore[union-attr]
                    assert _norm(name) in pins, f"{name} (extra {group}) is not pinned in constraints.txt"


def test_base_is_debian_12_and_python_is_its_own_3_11() -> None:
    """Debian 12 ships Python 3.11, the one pyproject allows: no third-party Python source."""
    steps = instructions()
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    froms = [a for op, a in steps if op == "FROM"]
    assert len(froms) == 1
    assert froms[0] == "${BASE_IMAGE}", froms[0]
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"(docker\.io/library/)?debian:bookworm-slim", base), base
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    runs = " ".join(a for op, a in steps if op == "RUN")
    assert "add-apt-repository" not in runs and "ppa:" not in runs
    assert re.search(r"apt-get install [^&]*\bpython3\.11\b", runs)
    assert "python3.11 -m venv" in runs
    pythons = set(re.findall(r"python3\.(\d+)", runs))
    assert pythons == {"11"}, pythons


def test_nvidia_container_toolkit_variables_match_the_locked_cuda() -> None:
    """Without a CUDA base image these variables are what makes the toolkit mount the driver."""
    env = " ".join(a for op, a in instructions() if op == "ENV")
    assert re.search(r"\bNVIDIA_VISIBLE_DEVICES=all\b", env)
    capabilities = re.search(r"\bNVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert capabilities and "compute" in capabilities.group(1).split(","), env
    required = re.search(r"\bNVIDIA_REQUIRE_CUDA=\"?cuda>=(\d+)\.\d+", env)
    assert required, env
    runtime = locked()["nvidia-cuda-runtime"]
    assert required.group(1) == runtime.split(".")[0], (required.group(0), runtime)


def test_dependencies_are_installed_in_a_layer_before_the_source_is_copied() -> None:
    """A source change rebuilds only the last install, not the GBs of CUDA wheels."""
    steps = instructions()
    first_source_copy = min(
        i for i, (op, a) in enumerate(steps) if op == "COPY" and {"geoseg", "flows"} & set(a.split()[:-1])
    )
    installs = [(i, w) for i, w in pip_installs() if w not in (["--upgrade", "pip"], ["-U", "pip"])]
    dependency_installs = [i for i, w in installs if "-r" in w and i < first_source_copy]
    assert dependency_installs, "no dependency install before the source is copied"
    copied_before = {
        src for op, a in steps[: dependency_installs[0]] if op == "COPY" for src in a.split()[:-1]
    }
    assert copied_before <= {"pyproject.toml", "constraints.txt"}, copied_before


def test_host_pip_settings_reach_every_install_only_as_build_secrets() -> None:
    """make image passes pip.conf / ca.crt as secrets: mounted for one RUN, never in a layer."""
    steps = instructions()
    for i, _ in pip_installs():
        run = steps[i][1]
        assert "--mount=type=secret,id=pip.conf" in run, run[:80]
        assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in run
    for op, args in steps:
        assert not (op in ("COPY", "ADD") and re.search(r"pip\.conf|\.crt|\.pem|wheels", args)), args
        assert not (
            op == "ENV" and re.search(r"PIP_(CONFIG_FILE|INDEX_URL|EXTRA_INDEX_URL|FIND_LINKS|CERT)", args)
        )


def test_runs_as_a_non_root_user() -> None:
    steps = instructions()
    users = [a.strip() for op, a in steps if op == "USER"]
    assert users, "no USER: the image would run as root"
    final = users[-1]
    assert final not in ("root", "0") and not final.startswith("0:"), final
    created = " ".join(a for op, a in steps if op == "RUN" and "useradd" in a)
    assert re.search(rf"useradd\b.*\b{re.escape(final)}\b", created), f"user {final} is never created"
    uid = re.search(r"--uid\s+(\d+)", created)
    assert uid is None or int(uid.group(1)) != 0
    last_user = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    assert not any(op == "RUN" for op, _ in steps[last_user:]), "RUN after the final USER"


def test_default_command_is_a_prefect_docker_worker_that_the_cli_accepts() -> None:
    steps = instructions()
    assert not [a for op, a in steps if op == "ENTRYPOINT"], "ENTRYPOINT would prefix flow-run commands"
    command = json.loads([a for op, a in steps if op == "CMD"][-1])
    assert command[:3] == ["prefect", "worker", "start"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options["--type"] == "docker"
    assert options["--pool"] == "geoseg-gpu"
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent))
    assert prefect is not None, "prefect CLI not installed beside this Python"
    run = subprocess.run([prefect, "worker", "start", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for option in options:
        assert option in run.stdout, f"`prefect worker start` has no {option}"


def test_geoseg_commands_run_in_the_image_exist() -> None:
    commands = [c.strip() for op, a in instructions() if op == "RUN" for c in re.split(r"&&|;|\|", a)]
    used = {m.group(1) for c in commands if (m := re.match(r"geoseg\s+([a-z][a-z-]*)", c))}
    assert used, "the image runs no geoseg smoke check"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert used <= set(sub.choices), used - set(sub.choices)  # type: ignore[arg-type]


def test_build_context_has_what_the_copies_need_and_nothing_private() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch(path, pattern) or fnmatch(path, pattern + "/*") or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for op, args in instructions():
        if op == "COPY":
            sources = [s for s in args.split()[:-1] if not s.startswith("--")]
            for src in sources:
                assert included(src), f"COPY {src}, but .dockerignore excludes it"
                assert (ROOT / src).exists(), src
    for private in (".venv/bin/python", ".git/config", "out/x.zarr/zarr.json", "catalogs/catalog.json"):
        assert not included(private), private


def test_prefect_yaml_docker_pool_matches_the_image() -> None:
    """The docker deployments run in this image: same pool, image name and working directory."""
    import yaml

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    steps = instructions()
    command = json.loads([a for op, a in steps if op == "CMD"][-1])
    pool = command[command.index("--pool") + 1]
    workdir = [a for op, a in steps if op == "WORKDIR"][-1]
    docker = [d for d in config["deployments"] if d["work_pool"]["name"] == pool]
    assert docker, f"no deployment uses the {pool} pool"
    build_tag = re.search(r"docker build -t (\S+)", (ROOT / "Dockerfile").read_text()).group(1)  # type: ignore[union-attr]
    for deployment in docker:
        image = deployment["work_pool"]["job_variables"]["image"]
        assert image.split(":")[0] == build_tag.split(":")[0], image
        pull = deployment.get("pull", config.get("pull"))
        dirs = [s["prefect.deployments.steps.set_working_directory"]["directory"] for s in pull]
        assert dirs == [workdir], (deployment["name"], dirs)
        requests = deployment["work_pool"]["job_variables"]["container_create_kwargs"]["device_requests"]
        assert any(["gpu"] in r["capabilities"] for r in requests), "the GPU is not passed to the container"
