"""The Docker image's recipe: linted, installed by the same Makefile, built and run by the CI step (.ci/docker)."""
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent
CI_SCRIPTS = [ROOT / ".ci" / "run", ROOT / ".ci" / "docker"]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:  # a test dependency; PyPI has no wheel of it for every platform
        pytest.skip(f"{name} is not installed for this platform ({sys.platform}, pyproject's dev extra)")
    return path


def _lint(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([_tool(tool), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_dockerfile_passes_hadolint():
    result = _lint("hadolint", ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_what_it_is_meant_to(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM debian\nRUN apt-get update && apt-get install -y python3\nUSER root\n")
    found = _lint("hadolint", careless).stdout
    for rule in ("DL3006", "DL3008", "DL3015", "DL3009", "DL3002"):  # untagged base, unpinned, extras, lists, root
        assert rule in found, found


def test_the_ci_scripts_pass_shellcheck():
    result = _lint("shellcheck", *CI_SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_with_the_makefile_and_its_pins():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    runs = re.findall(r"^RUN (.+)$", dockerfile, re.M)
    assert any(run.startswith("make torch") for run in runs) and any(run.startswith("make venv") for run in runs)
    assert dockerfile.index("make torch") < dockerfile.index("COPY . .") < dockerfile.index("make venv")
    assert "pip install" not in dockerfile  # every Python package comes through the Makefile
    assert re.search(r"^FROM debian:bookworm-slim$", dockerfile, re.M)
    assert re.search(r"^WORKDIR /workspace$", dockerfile, re.M)
    assert re.search(r"^USER \$\{ORINFLOW_UID\}:\$\{ORINFLOW_GID\}$", dockerfile, re.M)
    # torch and torchvision: the Makefile installs them first with the pins pyproject.toml declares
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    first = re.search(r"pip install --quiet (torch==\S+ torchvision==\S+)", makefile).group(1).split()
    assert first == [d for d in declared if d.split("==")[0] in ("torch", "torchvision")]


def test_the_build_context_leaves_out_what_is_not_source():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "workspace", "runs", "**/*.onnx", "**/__pycache__"):
        assert name in ignored, name
    # the certificates folder is in the context (COPY needs it) but certificates put there are never committed
    assert subprocess.run(["git", "ls-files", "--error-unmatch", "docker/ca-certificates/README.md"], cwd=ROOT,
                          capture_output=True).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "docker/ca-certificates/proxy.crt"], cwd=ROOT).returncode == 0


def test_docker_demo_runs_as_the_invoking_user_on_this_trees_workspace():
    plan = subprocess.run(["make", "-n", "docker-demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "docker build --force-rm" in plan
    run = next(line for line in plan.splitlines() if line.startswith("docker run"))
    assert '--user "$(id -u):$(id -g)"' in run
    assert f'-v "{ROOT}/workspace:/workspace/workspace"' in run and run.endswith("orinflow demo")


def test_ci_runs_the_docker_step_after_the_readme_test_command():
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith((" ", "#", "if", "fi", "set", "cd"))]
    assert commands[-2:] == ["make test", ".ci/docker"]
    step = (ROOT / ".ci" / "docker").read_text()
    flags = "--iptables=false --ip6tables=false --ip-forward=false --bridge=none --storage-driver=overlay2"
    assert flags in step and "trap cleanup EXIT" in step and "docker build" not in step.replace("make -s docker", "")
