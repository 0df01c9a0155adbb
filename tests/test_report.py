"""`orinflow report` on the PTQ benchmark's run records: figures equal the records', HTML renders in Chromium."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.report import write_report
from orinflow.report.render import FRONT_COLOUR

ROOT = Path(__file__).resolve().parents[1]
HEADER_BGR = (0x5c, 0x3b, 0x1f)  # the table header's #1f3b5c
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def benchmark_record(tmp_path_factory, tiny_shapes) -> Path:
    """A real, small run of benchmarks/ptq.py on the embedded detector and a few images of its recipe."""
    work = tmp_path_factory.mktemp("bench")
    record = work / "ptq_bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ptq.py"), "--yaml", str(tiny_shapes),
                    "--num-images", "8", "--methods",
                    "entropy", "--targets", "tensorrt,cpu", "--rounds", "3", "--batch", "2", "--json", str(record),
                    "--workdir", str(work / "run")], check=True, capture_output=True, text=True)
    return record


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:])}


def test_report_figures_equal_the_records(benchmark_record, tmp_path):
    written = write_report([benchmark_record], tmp_path / "report")
    route = json.loads(benchmark_record.read_text())["route"]
    records = [route["fp32"], *route["variants"]]
    rows = table_rows(written["markdown"].read_text())
    assert len(rows) == written["rows"] == 3
    fp32_b1 = records[0]["latency_ms"]["batch1"]["median"]
    for record in records:
        row = rows[Path(record["model"]).name]
        assert row["mAP50"] == f"{record['metrics']['mAP50']:.4f}"
        assert row["mAP50-95"] == f"{record['metrics']['mAP50-95']:.4f}"
        assert row["batch1 ms"] == f"{record['latency_ms']['batch1']['median']:.2f}"
        # the exports have a static batch of 1: the benchmark times no fake "batch 2" (2 batch-1 runs)
        assert "batch2" not in record["latency_ms"] and "batch2 ms" not in row
        assert row["speed-up batch1"] == f"{fp32_b1 / record['latency_ms']['batch1']['median']:.2f}x"
        assert row["size MB"] == f"{record['size_bytes'] / 1e6:.2f}"
        quant = record.get("quantization")
        assert row["route"] == ("ptq" if quant else "fp32") and row["target"] == (quant["target"] if quant else "-")
        if quant:
            delta = (record["metrics"]["mAP50-95"] - records[0]["metrics"]["mAP50-95"]) * 100
            assert row["Δ vs FP32 (pts)"] == f"{delta:+.2f}"
            assert row["INT8 FLOP share"] == f"{record['qdq_report']['quantized_flop_share']:.1%}"
            assert row["2:4 FLOP share"] == f"{record['sparsity']['sparse_flop_share']:.1%}"
    html = written["html"].read_text()
    assert "<svg" in html and "<img" not in html and "http" not in html.split("<svg")[0]  # self-contained
    assert all(Path(record["model"]).name in html for record in records)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs "
                    "it; `apt-get install chromium` here)")
def test_report_html_renders_in_headless_chromium(benchmark_record, tmp_path):
    written = write_report([benchmark_record], tmp_path / "report")
    page = written["html"].resolve().as_uri()
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert dom.stdout.count("<tr") == 4 and 'id="results"' in dom.stdout  # header + three models
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1600,1800", page],
                   capture_output=True, timeout=120, check=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1800, 1600)

    def pixels_near(bgr) -> int:
        return int((np.abs(image.astype(int) - np.array(bgr)).sum(2) < 30).sum())

    red = tuple(int(FRONT_COLOUR[i:i + 2], 16) for i in (5, 3, 1))
    assert pixels_near(HEADER_BGR) > 2000  # the table header is drawn
    assert pixels_near(red) > 150  # the Pareto front line of the plot is drawn
    assert (image < 250).any(2).mean() > 0.05  # the page is not blank


def test_report_cli_and_bad_input(benchmark_record, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(benchmark_record), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "report_accuracy_vs_latency.png").exists()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "no evaluation records" in result.output and not (tmp_path / "r2").exists()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(OrinflowError, match="not a JSON run record"):
        write_report([tmp_path / "bad.json"], tmp_path / "r3")


def test_a_folder_with_json_that_is_no_record_is_reported_and_the_rest_counted(benchmark_record, tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    shutil.copy(benchmark_record, folder / "run.json")
    (folder / "a_broken.json").write_text("{not json")
    (folder / "package.json").write_text('{"name": "web"}')
    result = CliRunner().invoke(app, ["report", str(folder), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "skipped 1 .json file(s)" in result.output and "a_broken.json" in result.output
    assert write_report([folder], tmp_path / "r2")["skipped"] == [str(folder / "a_broken.json")]
