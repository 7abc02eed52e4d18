"""The deployments of prefect.yaml, by the name users run them with (``FLOW/NAME``).

``prefect deploy --name`` matches FLOW against the entrypoint's function name
(``segment_flow/local``) while ``prefect deployment run`` takes the flow's own name
(``segment/local``). scripts/prefect-deploy.sh asks this module for the ``--name``
arguments, so both commands take the same ``FLOW/NAME`` and ``make deploy`` registers
every deployment that the local process pool serves, read from prefect.yaml itself:

    python -m flows.deployments --pool geoseg-local      # the --name arguments, one a line
    python -m flows.deployments segment/gpu              # those of the named deployments
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from geoseg.errors import ConfigError

__all__ = ["PREFECT_YAML", "Deployment", "deploy_arguments", "load_deployments", "main"]

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


@dataclass(frozen=True)
class Deployment:
    """One entry of prefect.yaml's ``deployments``."""

    flow: str  # the flow's name (``@flow(name=...)``)
    name: str
    function: str  # the entrypoint's function name
    pool: str

    @property
    def full_name(self) -> str:
        """What ``prefect deployment run`` takes."""
        return f"{self.flow}/{self.name}"

    @property
    def deploy_name(self) -> str:
        """What ``prefect deploy --name`` takes."""
        return f"{self.function}/{self.name}"


def _flow_name(entrypoint: str) -> tuple[str, str]:
    """(flow name, function name) of ``flows/segment.py:segment_flow``."""
    path, function = entrypoint.split(":")
    module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
    return str(getattr(module, function).name), function


def load_deployments(path: Path = PREFECT_YAML) -> list[Deployment]:
    """Every deployment of prefect.yaml, in file order."""
    entries = yaml.safe_load(path.read_text())["deployments"]
    result = []
    for entry in entries:
        flow, function = _flow_name(entry["entrypoint"])
        result.append(Deployment(flow, entry["name"], function, entry["work_pool"]["name"]))
    return result


def deploy_arguments(names: Sequence[str], pool: str, path: Path = PREFECT_YAML) -> list[str]:
    """``--name`` arguments of ``prefect deploy`` for ``names`` (FLOW/NAME), or for the pool's."""
    deployments = load_deployments(path)
    if names:
        by_name = {d.full_name: d for d in deployments}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"no deployment {unknown} in {path}; known: {sorted(by_name)}")
        chosen = [by_name[n] for n in names]
    else:
        chosen = [d for d in deployments if d.pool == pool]
        if not chosen:
            raise ConfigError(f"no deployment of {path} uses the work pool {pool!r}")
    return [arg for d in chosen for arg in ("--name", d.deploy_name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__)
    parser.add_argument("names", nargs="*", help="FLOW/NAME of deployments (default: the pool's)")
    parser.add_argument("--pool", default="geoseg-local", help="work pool whose deployments to list")
    args = parser.parse_args(argv)
    try:
        print("\n".join(deploy_arguments(args.names, args.pool)))
    except ConfigError as exc:
        print(f"prefect-deploy: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
