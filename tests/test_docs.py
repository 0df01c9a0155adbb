"""The README and docs/: the quick start runs as written, the pages stay short, indexed and about the product."""
import json
from pathlib import Path
import re
import shlex
import shutil

import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL, ROOT
from orinflow.cli import app

README = ROOT / "README.md"
DOCS = ROOT / "docs"
QUICK_START = "## Your own model in five minutes"


def quick_start_blocks() -> list[list[list[str]]]:
    """The README's quick-start section: each bash block's `orinflow` command lines, split as a shell does."""
    text = README.read_text()
    section = text.split(QUICK_START, 1)[1].split("\n## ", 1)[0]
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        joined = block.replace("\\\n", " ")
        blocks.append([shlex.split(line, comments=True) for line in joined.splitlines()
                       if line.startswith("orinflow ")])
    return blocks


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A user's folder: the embedded detector as best.pt and two train and two val images as data.yaml."""
    from orinflow.demo import shapes

    folder = tmp_path_factory.mktemp("user")
    shutil.copy(DEMO_MODEL, folder / "best.pt")
    shutil.copy(shapes.generate(folder / "data", {"train": (2, 0), "val": (2, 1)}), folder / "data.yaml")
    return folder


def _run_block(lines: list[list[str]], folder, monkeypatch) -> dict[str, str]:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(folder / "workspace"))
    outputs = {}
    for argv in lines:
        assert argv[0] == "orinflow"
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
        outputs[argv[1]] = " ".join(result.output.split())
    return outputs


@pytest.fixture(scope="module")
def quick_start(user_folder):
    with pytest.MonkeyPatch.context() as patch:
        return _run_block(quick_start_blocks()[0], user_folder, patch)


def test_the_quick_start_runs_as_written(quick_start, user_folder):
    assert [argv[1] for argv in quick_start_blocks()[0]] == ["export", "quantize", "evaluate", "deploy"]
    assert (user_folder / "best.pt").read_bytes() == DEMO_MODEL.read_bytes()  # the user's checkpoint untouched
    assert (user_folder / "best_int8.onnx").is_file() and (user_folder / "best_jetson" / "build_engine.sh").is_file()
    assert "lint" in quick_start["quantize"]
    compared = quick_start["evaluate"]
    assert all(name in compared for name in ("best.pt", "best.onnx", "best_int8.onnx")) and "mAP50-95" in compared


@pytest.fixture(scope="module")
def budget_ranking(quick_start, user_folder):
    """The block's first two lines (calibrate, sensitivity): a test of their own, so that no one test runs the
    whole block within the per-test time limit."""
    with pytest.MonkeyPatch.context() as patch:
        return _run_block(quick_start_blocks()[1][:2], user_folder, patch)


def test_the_budget_blocks_ranking_lines_run_as_written(budget_ranking, user_folder):
    assert list(budget_ranking) == ["calibrate", "sensitivity"]
    assert (user_folder / "calib.npy").is_file() and (user_folder / "best_sensitivity" / "sensitivity.json").is_file()
    assert "rank" in budget_ranking["sensitivity"] and "measured in" in budget_ranking["sensitivity"]


def test_the_steps_when_int8_loses_too_much_run_as_written(budget_ranking, user_folder, monkeypatch):
    outputs = budget_ranking | _run_block(quick_start_blocks()[1][2:], user_folder, monkeypatch)
    assert list(outputs) == ["calibrate", "sensitivity", "quantize", "qat"]
    assert "budget 0.50 points" in outputs["quantize"] and (user_folder / "best_int8_budget.onnx").is_file()
    made = json.loads((user_folder / "best_int8_budget.json").read_text())
    choice = made["calibration_choice"]  # chosen by measurement: each calibration's full-INT8 selection score
    assert made["quantization"]["method"] == choice["chosen"] and "calibration chosen" in outputs["quantize"]
    tried = {c["method"]: c for c in choice["candidates"]}
    assert list(tried) == ["max", "percentile", "entropy", "mse", "search"]
    assert tried["search"]["cached"]  # `sensitivity`'s full (search) quantization is not made again
    if "search" in [f["method"] for f in choice["finalists"]]:  # nor its ranking measured again
        assert "sensitivity: read from cache" in outputs["quantize"]
    assert (user_folder / "best_qat_int8.onnx").is_file()
    qat = json.loads((user_folder / "best_qat_int8.json").read_text())
    assert Path(qat["start"]["model"]).name == "best_int8_budget.onnx" and qat["start"]["calibrated_afresh"] == []


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_docs_have_an_index_and_a_short_summary_each():
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    index = (DOCS / "README.md").read_text()
    assert [name for name in pages if f"]({name})" not in index] == []
    for page in pages:
        lines = (DOCS / page).read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "", page
        summary = lines[2:lines.index("", 2)]
        assert summary and len(summary) <= 3 and all(line.startswith("> ") for line in summary), page


# Wording about how the project was made (its rounds, sessions, earlier machines), not about the product.
HISTORY = re.compile(
    r"\b(this|that|an? earlier|earlier|previous|last|next|later|no|every|each) (stop|session|round)s?\b"
    r"|(?<!-)\b(stop|session|round)s? \d+\b|\bissues? #?\d+\b|\bdevelopment (machine|round|session)s?\b"
    r"|\buntil this\b|\bso far had\b|\bnone was lent\b", re.I)


def test_readme_and_docs_speak_of_the_product_only():
    found = [f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
             for page in [README, *sorted(DOCS.glob("*.md"))]
             for number, line in enumerate(page.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert found == []


def test_the_history_check_finds_what_it_is_meant_to():
    for line in ("measured in an earlier stop", "on this session's CPU", "blocked since issue 14",
                 "no session so far had a GPU", "stop 24 read", "the development machine"):
        assert HISTORY.search(line), line
    for line in ("an ONNX Runtime session", "the next stage", "stops early under --max-drop", "one round of timing"):
        assert not HISTORY.search(line), line
