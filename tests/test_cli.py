"""The command line: exit codes, every issue reported, no tracebacks, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.json"
runner = CliRunner()


def write(tmp_path: Path, content: str | dict) -> Path:
    path = tmp_path / "canvas.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_validate_a_valid_canvas_exits_0():
    result = runner.invoke(app, ["validate", str(HELLO)])
    assert result.exit_code == 0, result.output


def test_validate_reports_every_problem_and_exits_2(tmp_path):
    bad = {
        "name": "bad",
        "nodes": [
            {"id": "a", "type": "transform", "data": {"output": "{{ ghost.x }}"}},
            {"id": "b", "type": "nope"},
            {"id": "c", "type": "transform", "data": {"output": 1}},
            {"id": "d", "type": "transform", "data": {"output": 1}},
        ],
        "edges": [
            {"id": "e1", "source": "c", "target": "d"},
            {"id": "e2", "source": "d", "target": "c"},
            {"id": "e3", "source": "a", "target": "zzz"},
        ],
    }
    result = runner.invoke(app, ["validate", str(write(tmp_path, bad)), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    codes = {(i["code"], i["node_id"] or i["edge_id"]) for i in report["issues"] if i["severity"] == "error"}
    assert codes == {("unknown_reference", "a"), ("unknown_node_type", "b"), ("cycle", "c"), ("dangling_edge", "e3")}


def test_validate_malformed_json_is_a_clear_error_not_a_traceback(tmp_path):
    result = runner.invoke(app, ["validate", str(write(tmp_path, '{"nodes": [}'))])
    assert result.exit_code == 2
    assert "not valid JSON" in result.output and "line 1" in result.output
    assert "Traceback" not in result.output


def test_validate_missing_file(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_plan_shows_levels_and_container_bodies():
    result = runner.invoke(app, ["plan", str(HELLO)])
    assert result.exit_code == 0, result.output
    assert "level 0:" in result.stdout and "body:" in result.stdout
    assert "--condition-short--> excited" in result.stdout


def test_schema_is_json_schema():
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["title"] == "FlowMaestro canvas v1"
    assert "transform" in schema["$defs"]["NodeModel"]["properties"]["type"]["enum"]


def test_run_refuses_bad_inputs_before_starting_anything():
    result = runner.invoke(app, ["run", str(HELLO), "--inputs-json", '{"name": 3}'])
    assert result.exit_code == 2
    assert "input 'name' must be a string" in result.output


def test_run_refuses_a_missing_required_input():
    result = runner.invoke(app, ["run", str(HELLO)])
    assert result.exit_code == 2
    assert "input 'name' is required" in result.output


@pytest.mark.prefect
def test_run_json_prints_the_run_result_alone(prefect_server):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "run",
            str(HELLO),
            "--input",
            "name=Grace",
            "--input",
            'languages=["fr"]',
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed"
    assert result["output"]["greetings"] == ["Bonjour Grace!"]
    assert result["nodes"]["calm"]["status"] == "completed"  # "Grace" is longer than 4 letters
    assert {t["node_id"] for t in result["trace"]} >= {"start", "tone", "translate", "wait", "greet", "end"}


@pytest.mark.prefect
def test_run_exit_code_1_when_the_run_fails(prefect_server, tmp_path):
    failing = {
        "name": "failing",
        "nodes": [{"id": "t", "type": "transform", "data": {"output": "{{ inputs.missing.deeper }}"}}],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(write(tmp_path, failing)), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert result["nodes"]["t"]["error"]["type"] == "TemplateError"


@pytest.mark.parametrize("failure", ["503", "connection"])
def test_resume_when_prefect_fails_is_one_line_naming_prefect_not_a_traceback(monkeypatch, tmp_path, failure):
    import httpx

    import cli.main
    import flows.approvals

    request = httpx.Request("POST", "http://prefect.test/api/flow_runs/x/input")

    async def failing_resume(*args, **kwargs):
        if failure == "503":
            raise httpx.HTTPStatusError("unavailable", request=request, response=httpx.Response(503, request=request))
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(cli.main, "_prefect_server", lambda quiet=False: None)
    monkeypatch.setattr(flows.approvals, "resume_approval", failing_resume)
    monkeypatch.setenv("FLOWMAESTRO_HOME", str(tmp_path))
    monkeypatch.setenv("FLOWMAESTRO_DECISION_KEY", "k" * 32)
    result = runner.invoke(app, ["resume", "00000000-0000-0000-0000-000000000001", "--node", "ask"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception  # not the client's error, uncaught
    assert "Prefect" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_help_rewraps_docstrings_instead_of_breaking_sentences_where_the_source_does():
    # Wide enough for every summary on one line: a line break left in would still show.
    wide = runner.invoke(app, ["--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert wide.exit_code == 0, wide.output
    assert "completed nodes are restored, the rest run. Prints the execution id and its status." in wide.output
    assert "reused while its settings are the same), print the result" in wide.output
    one = runner.invoke(app, ["retry", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert "Execute a failed or cancelled run again through the API: completed nodes are restored, the rest" in (
        one.output
    )
    # Nested groups' commands too.
    nested = runner.invoke(app, ["schedules", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert nested.exit_code == 0 and "\n│              " not in nested.output.split("Commands")[-1], nested.output


def test_validation_issues_name_the_field_once(tmp_path):
    raw = json.loads(HELLO.read_text())
    raw["nodes"].append({"id": "pause-x", "type": "delay", "data": {"seconds": "soon"}})
    raw["nodes"].append({"id": "ask", "type": "llm", "data": {"prompt": "x", "output_schema": {"type": "nope"}}})
    result = runner.invoke(app, ["validate", str(write(tmp_path, raw))])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert any(
        line.startswith("error  node 'pause-x', field data.seconds: expected a number, or a template") for line in lines
    ), lines
    schema_issue = "error  node 'ask', field data.output_schema: not a valid JSON Schema at type: "
    assert any(line.startswith(schema_issue) for line in lines), lines
    assert "data.seconds: data.seconds" not in result.stderr and "Value error" not in result.stderr
