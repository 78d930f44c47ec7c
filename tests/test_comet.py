"""Comet against servers that misbehave (real HTTP servers on 127.0.0.1), the API key written nowhere, and the
names a dashboard needs, read back from real offline archives of a sweep and its report."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.config import compose
from experiments.record import RunRecord
from experiments.report.collect import Run
from experiments.tracking import comet, comet_logs, dashboard
from tests.conftest import TINY, Cli
from tests.helpers import (
    COMET_KEY,
    REPO,
    Result,
    archive_messages,
    archive_metrics,
    archive_params,
    clean_env,
    refused_url,
    run_cli,
    run_dirs,
    summary,
)

RUN = ("train", "arch=resnet", "arch.depth=8", *TINY)


class CometServer:
    """A local HTTP server on a free port, as `kind` says: `comet` answers as a Comet server does; `dies`
    and `stalls` too, until the run sends its parameters (after its start): then `dies` closes every
    connection and stops listening, `stalls` never answers again; `api_hangs` answers the version check but
    never the API; `portal` answers HTML to everything; `floods` answers everything with bytes without end;
    `fails` answers every request with a server error."""

    def __init__(self, kind: str) -> None:
        self.kind, self.dead, self.stalled, self.release = kind, *(threading.Event() for _ in range(3))
        self.httpd = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), {"server_state": self}))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/clientlib/"

    def die(self) -> None:
        self.dead.set()
        threading.Thread(target=self.close, daemon=True).start()  # not from a handler: shutdown waits

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up on a request resets its connection: no traceback on stderr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: CometServer

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        state = self.server_state
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/parameter" in self.path and state.kind == "dies":
            state.die()
        if "/parameter" in self.path and state.kind == "stalls":
            state.stalled.set()
        if state.stalled.is_set():
            state.release.wait(60)
        if state.dead.is_set() or state.stalled.is_set():
            self.close_connection = True
            return
        if state.kind == "portal":
            return self._send(b"<html><body>Please log in to the Wi-Fi</body></html>", "text/html")
        if state.kind == "floods":
            return self._flood()
        if state.kind == "fails":
            self.send_error(500)
            return None
        if "isAlive/ver" in self.path:
            return self._send(json.dumps({"version": "3.40.1"}).encode())
        if state.kind == "api_hangs":
            state.release.wait(60)
            self.close_connection = True
            return
        return self._send(json.dumps(self._comet_answer()).encode())

    def _flood(self) -> None:
        """200, then `[` until the client hangs up (or the server closes)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):
            while not self.server_state.release.is_set():
                self.wfile.write(b"[" * 65536)

    def _comet_answer(self) -> dict:
        """What a Comet server answers: to the new experiment, its IDs and web page; to the status, the
        heartbeat intervals; to the data, nothing to say."""
        if self.path.endswith("/logger/add/run"):
            web = self.server_state.url.replace("/clientlib/", "/workspace/resnet-vs-densenet/")
            return {"runId": "run-1", "project_id": "project-1", "focusUrl": web}
        if self.path.endswith("/status-report/update"):
            return {name: 60_000 for name in ("is_alive_beat_duration_millis", "gpu_monitor_interval_millis")}
        return {}

    do_GET = do_POST = do_PUT = _answer


@contextlib.contextmanager
def comet_server(kind: str) -> Iterator[str]:
    """The URL comet_ml is to use (COMET_URL_OVERRIDE) for a server of `kind`, or `nothing` listening."""
    if kind == "nothing":
        yield refused_url()
        return
    server = CometServer(kind)
    try:
        yield server.url
    finally:
        if not server.dead.is_set():
            server.close()


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """Seconds spent in each call of comet.start and CometRun.finish (the real ones, timed)."""
    times: dict[str, list[float]] = {"start": [], "finish": []}

    def timing(name: str, function):
        def call(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[name].append(time.perf_counter() - began)

        return call

    monkeypatch.setattr(comet, "start", timing("start", comet.start))
    monkeypatch.setattr(comet.CometRun, "finish", timing("finish", comet.CometRun.finish))
    return times


def comet_lines(text: str) -> list[str]:
    """The lines about Comet in a command's output (ours say `Comet`, comet_ml's own start `COMET`), after
    checking it holds no traceback."""
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if "Comet" in line or "COMET" in line]


def quiet(result: Result) -> list[str]:
    """comet_lines of what an in-process command printed, after checking that comet_ml's and urllib3's
    records cannot reach the terminal (comet_ml's own console handler writes to the stream it found at
    import, which the capture of a later test does not see)."""
    for name in comet_logs.LOGGERS:
        logger = logging.getLogger(name)
        assert not logger.propagate and not [h for h in logger.handlers if type(h) is logging.StreamHandler]
    return comet_lines(result.out + result.err)


def the_run(workdir: Path) -> tuple[Path, Path | None]:
    (run,) = run_dirs(workdir)
    archives = sorted((run / "comet").glob("*.zip")) if (run / "comet").is_dir() else []
    assert len(archives) <= 1, archives
    return run, archives[0] if archives else None


def assert_archive_holds_the_run(archive: Path, run: Path) -> None:
    metrics, record = archive_metrics(archive), summary(run)
    assert len(metrics["train/loss"]) == 1 and len(metrics["val/acc"]) == 1
    for key in ("test_error", "train_error", "params", "activation_bytes"):
        assert metrics[key] == [pytest.approx(record[key])], key
    assert archive_params(archive)["arch.depth"] == 8


def run_against(kind: str, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> tuple[Result, str]:
    """RUN with a key, against a Comet server of `kind`; what it printed (it must succeed) and the URL."""
    with comet_server(kind) as url:
        monkeypatch.setenv("COMET_API_KEY", COMET_KEY)
        monkeypatch.setenv("COMET_URL_OVERRIDE", url)
        result = cli(*RUN)
    assert result.status == 0, result.err
    return result, url


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nothing", "connection refused"),
        ("api_hangs", "no answer within 2 s"),
        ("portal", "it answers, but not as Comet does (a captive portal?)"),
        ("floods", "it answers, but not as Comet does (over 64 KiB for its version)"),
        ("fails", "it answers HTTP 500 (Internal Server Error)"),
    ],
)
def test_a_server_that_cannot_be_used_makes_the_run_offline_with_one_line(
    kind, reason, cli, workdir, monkeypatch, timed
):
    result, url = run_against(kind, cli, monkeypatch)
    (line,) = quiet(result)
    server = url.removesuffix("/clientlib/")
    run, archive = the_run(workdir)
    shown = archive.relative_to(workdir)
    assert (
        line == f"Comet server {server}: {reason}; logging offline instead (afterwards: comet upload {shown})"
    )
    assert summary(run)["comet"] == {"mode": "offline", "archive": str(archive), "fallback": reason}
    assert_archive_holds_the_run(archive, run)
    log = (run / "comet" / "comet.log").read_text()  # comet_ml's own account, or our version check's
    assert "Traceback" in log if kind == "api_hangs" else f"isAlive/ver: {reason}" in log
    assert holding(workdir, COMET_KEY) == []
    print(f"{kind}: start {timed['start'][0]:.1f} s, end {timed['finish'][0]:.1f} s")
    assert timed["start"][0] < 4 and timed["finish"][0] < 3


@pytest.mark.parametrize(
    ("kind", "reasons"),
    [
        # comet_ml may send the parameters (and the server die) as late as its end, which the run's own
        # look at the server runs beside
        # (a server killed in the middle of a request resets that connection)
        (
            "dies",
            [
                "connection refused",
                "the connection was reset",
                "it answers again, but did not take the data in time",
            ],
        ),
        # a server whose every handler hangs: a new connection times out, or is refused once its queue is full
        ("stalls", ["no answer within 2 s", "connection refused"]),
    ],
)
def test_a_server_lost_during_the_run_leaves_an_archive_and_one_line(
    kind, reasons, cli, workdir, monkeypatch, timed
):
    result, url = run_against(kind, cli, monkeypatch)
    (line,) = quiet(result)
    run, archive = the_run(workdir)
    shown = archive.relative_to(workdir)
    server = url.removesuffix("/clientlib/")
    found = [reason for reason in reasons if f"during the run ({reason});" in line]
    assert len(found) == 1, line
    (lost,) = found
    assert line == (
        f"Comet lost {server} during the run ({lost}); all its data is in {shown} "
        f"(upload: comet upload --force-reupload {shown})"
    )
    record = summary(run)["comet"]
    assert {k: record[k] for k in ("mode", "archive", "fallback")} == {
        "mode": "offline",
        "archive": str(archive),
        "fallback": f"server lost during the run: {lost}",
    }
    assert_archive_holds_the_run(archive, run)
    print(f"{kind}: start {timed['start'][0]:.1f} s, end {timed['finish'][0]:.1f} s")
    assert timed["start"][0] < 4 and timed["finish"][0] < 15  # a stalled server: the waits of SETTINGS


def test_a_working_server_takes_the_run_online(cli, workdir, monkeypatch, timed):
    result, url = run_against("comet", cli, monkeypatch)
    (line,) = quiet(result)
    run, archive = the_run(workdir)
    key = (run / "comet" / "experiment_key").read_text()
    url = url.replace("/clientlib/", f"/workspace/resnet-vs-densenet/{key}")
    assert summary(run)["comet"] == {"mode": "online", "url": url} and line == f"Comet: {url}"
    assert archive is None and "ERROR" not in (run / "comet" / "comet.log").read_text()
    assert holding(workdir, COMET_KEY) == []
    print(f"online: start {timed['start'][0]:.1f} s, end {timed['finish'][0]:.1f} s")
    assert timed["start"][0] < 3 and timed["finish"][0] < 4


def test_a_ctrl_c_during_comets_end_leaves_the_runs_record(cli, workdir, monkeypatch):
    """Comet's end can take seconds; a Ctrl+C then stops the command, and the record is already written."""

    def interrupted(self, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(comet.CometRun, "finish", interrupted)
    monkeypatch.setenv("COMET_API_KEY", COMET_KEY)
    monkeypatch.setenv("COMET_URL_OVERRIDE", refused_url())
    result = cli(*RUN)
    assert result.status == 130 and "the run's record says where it stopped" in result.error_line()
    run, _ = the_run(workdir)
    assert summary(run)["status"] == "completed" and summary(run)["comet"] == {"mode": "offline"}


def test_a_comet_folder_that_cannot_be_written_disables_comet_with_one_line(cli, workdir, timed):
    # the run's directory (as a run stopped before its first epoch leaves it) with a file where the folder
    # should be: unwritable for root too, unlike permission bits
    (workdir / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose("train", list(RUN[1:])), workdir / "run" / ".hydra" / "config.yaml")
    (workdir / "run" / "comet").write_text("not a folder")
    result = cli(*RUN, "hydra.run.dir=run")
    assert result.status == 0, result.err
    (line,) = quiet(result)
    reason = f"{workdir / 'run' / 'comet'} is not a folder"
    assert line == f"Comet disabled: {reason}; the run goes on without it"
    assert summary(workdir / "run")["comet"] == {"mode": "disabled", "reason": reason}
    assert summary(workdir / "run")["status"] == "completed"
    print(f"unwritable: start {timed['start'][0]:.2f} s, end {timed['finish'][0]:.2f} s")
    assert timed["start"][0] < 1 and timed["finish"][0] < 1


def test_online_without_a_key_is_refused_before_anything_runs(cli, workdir):
    result = cli("train", "dataset=digits", "logger=comet", "logger.online=true")
    assert result.status == 1
    assert result.error_line() == (
        "error: logger.online=true but no Comet API key: set COMET_API_KEY or run `comet login`"
    )
    assert sorted(p.name for p in workdir.iterdir()) == ["home"]


def holding(root: Path, secret: str) -> list[str]:
    """Every file under `root` (members of zip archives too) whose name or content holds `secret`."""
    found = []
    for path in sorted(root.rglob("*")):
        if secret in path.name:
            found.append(str(path))
        if not path.is_file():
            continue
        if secret.encode() in path.read_bytes():
            found.append(str(path))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found += [f"{path}:{m}" for m in archive.namelist() if secret.encode() in archive.read(m)]
    return found


@pytest.fixture(scope="module")
def keyed_sweep(keyed_digits_sweep, tmp_path_factory, session_cli) -> tuple[Path, str]:
    """A copy of the session's digits sweep (trained with an API key set and no server answering, so every
    run fell back to offline), lesion.csv and signals.csv written into plain14's run, and its report, made
    in-process with the key still set: (the root, what the sweep and the report printed)."""
    trained, printed = keyed_digits_sweep
    root = tmp_path_factory.mktemp("keyed")
    shutil.copytree(trained, root, dirs_exist_ok=True)  # all of it, the user's home too
    (plain14,) = [run for run in run_dirs(root / "multirun") if run.name.startswith("plain14-")]
    write_lesion_and_signals(plain14)
    keyed = {"COMET_API_KEY": COMET_KEY, "COMET_URL_OVERRIDE": refused_url()}
    return root, printed + session_cli(root, ["report", "multirun", "--out", "report"], **keyed)


LESION = """kind,k,blocks,test_error,note
intact,0,,0.10,
single,1,1,0.30,
single,1,2,,a plain block that changes the maps' size or count has no shortcut to fall back on: kept
single,1,3,0.50,
random,1,1,0.20,
random,1,3,0.40,
random,2,1;3,0.60,
"""
SIGNALS = """step,block,index,quantity,value
0,stem,0,response_std,1.0
0,layer1.0,1,response_std,2.0
0,stem,0,grad_norm,0.5
0,layer1.0,1,grad_norm,0.25
0,layer1.0.conv1,1,conv_response_std,9.0
7,stem,0,response_std,1.5
7,layer1.0,1,response_std,2.5
7,stem,0,grad_norm,0.75
7,layer1.0,1,grad_norm,0.5
"""


def write_lesion_and_signals(run: Path) -> None:
    (run / "lesion.csv").write_text(LESION)
    (run / "signals.csv").write_text(SIGNALS)


def test_lesion_and_signal_files_become_curves(tmp_path):
    write_lesion_and_signals(tmp_path)
    assert dashboard.lesion_curves(Run.read(tmp_path).lesion, "plain8-digits-s0") == {
        "lesion_single-plain8-digits-s0": ([1, 3], [0.30, 0.50]),  # block 2 cannot be deleted
        "lesion_random-plain8-digits-s0": ([1, 2], [pytest.approx(0.30), 0.60]),
    }
    assert dashboard.signal_curves(Run.read(tmp_path).signals, "run") == {
        "grad_norm_first_step-run": (0, ([0, 1], [0.5, 0.25])),
        "grad_norm_last_step-run": (7, ([0, 1], [0.75, 0.5])),
        "response_std_first_step-run": (0, ([0, 1], [1.0, 2.0])),
        "response_std_last_step-run": (7, ([0, 1], [1.5, 2.5])),
    }
    (tmp_path / "lesion.csv").write_text("kind,k,blocks,test_error,note\nsingle,1,x,0.3,\nsingle,1\n")
    assert (
        dashboard.lesion_curves(Run.read(tmp_path).lesion, "r") == {}
    )  # rows that do not parse are left out
    assert dashboard.signal_curves(Run.read(tmp_path / "absent").signals, "r") == {}


def test_the_api_key_is_written_nowhere(keyed_sweep, cli, workdir, monkeypatch):
    root, printed = keyed_sweep
    assert (root / "multirun").is_dir() and list(root.rglob("multirun.yaml")) and list(root.rglob("*.zip"))
    assert list(root.rglob("comet.log")) and list(root.rglob(".hydra"))
    assert holding(root, COMET_KEY) == [] and COMET_KEY not in printed
    monkeypatch.setenv("COMET_API_KEY", COMET_KEY)
    result = cli(*RUN, "logger=csv")
    assert result.status == 0, result.err
    assert list(workdir.rglob("csv/metrics.csv")) and list(workdir.rglob("csv/hparams.yaml"))
    assert holding(workdir, COMET_KEY) == [] and COMET_KEY not in result.out + result.err


def test_each_run_and_the_report_say_one_line_about_comet(keyed_sweep):
    lines = comet_lines(keyed_sweep[1])
    assert len(lines) == 5 and all("connection refused; logging offline instead" in line for line in lines)


def doc_names() -> dict[str, set[str]]:
    """docs/comet.md's table of names: kind -> names (curves as `<kind>-<series>` patterns)."""
    names: dict[str, set[str]] = {}
    for name, kind in re.findall(
        r"^\| `([^`]+)` \| (\w+) \|", (REPO / "docs" / "comet.md").read_text(), re.M
    ):
        names.setdefault(kind, set()).add(name)
    return names


def test_the_doc_names_what_the_code_logs():
    names = doc_names()
    assert names["parameter"] == set(dashboard.PARAMETERS)
    assert set(dashboard.FINAL_METRICS) <= names["metric"]
    assert set(dashboard.FINAL_METRICS) <= set(RunRecord().to_json())  # logged under the record's names
    assert {curve.split("-<")[0] for curve in names["curve"]} == set(dashboard.REPORT_CURVES)


def test_the_archives_hold_every_name_the_doc_gives(keyed_sweep):
    root, _ = keyed_sweep
    names = doc_names()
    for run in run_dirs(root / "multirun"):
        (archive,) = (run / "comet").glob("*.zip")
        record, params, metrics = summary(run), archive_params(archive), archive_metrics(archive)
        assert {p: params[p] for p in names["parameter"] if "<" not in p} == {
            "family": record["arch"],
            "depth": record["depth"],
            "dataset": "digits",
            "seed": 0,
            "memory_efficient": False,
            "precision": "32-true",
            "sweep": record["sweep"],
        }
        assert params["environment.torch"] == record["environment"]["torch"]
        assert params["environment.threads"] == record["environment"]["threads"]
        for name in names["metric"]:  # a final number the run did not measure (null) is not logged
            assert name in metrics or record.get(name, 0) is None, name
            if name in dashboard.FINAL_METRICS and record[name] is not None:
                assert metrics[name][-1] == pytest.approx(record[name]), name
    (archive,) = (root / "report" / "comet").glob("*.zip")
    curves = archive_curves(archive)
    for pattern in names["curve"]:
        assert any(re.fullmatch(re.sub(r"<\w+>", r"[\\w.-]+", pattern), c) for c in curves), pattern
    uploads = [m["payload"] for m in archive_messages(archive) if m["type"] == "file_upload"]
    images = {u["additional_params"]["figName"] for u in uploads if u["upload_type"] == "visualization"}
    assets = {u["additional_params"]["fileName"] for u in uploads if u["upload_type"] == "asset"}
    assert names["image"] <= images and names["table"] <= assets


def archive_curves(archive: Path) -> dict[str, dict]:
    """The curves of an offline archive: name -> {"x": [...], "y": [...]}."""
    curves = {}
    with zipfile.ZipFile(archive) as z:
        for message in archive_messages(archive):
            payload = message["payload"]
            if message["type"] == "file_upload" and payload["upload_type"] == "curve":
                data = json.loads(z.read(payload["file_path"]))
                curves[payload["additional_params"]["fileName"]] = data
    return curves


def test_the_report_logs_the_data_behind_its_figures(keyed_sweep):
    root, _ = keyed_sweep
    (archive,) = (root / "report" / "comet").glob("*.zip")
    with zipfile.ZipFile(archive) as z:
        assert "report" in json.loads(z.read("experiment.json"))["tags"]
    curves = archive_curves(archive)
    records = {(r["arch"], r["depth"]): r for r in map(summary, run_dirs(root / "multirun"))}
    for family in ("plain", "resnet"):
        for key in ("train_error", "test_error", "activation_bytes", "step_time_ms"):
            curve = curves[f"{key}_vs_depth-{family}-digits"]
            assert curve == {
                "x": [8, 14],
                "y": [pytest.approx(records[family, d][key]) for d in (8, 14)],
                "name": f"{key}_vs_depth-{family}-digits",
            }
        accuracy = curves[f"test_accuracy_vs_params-{family}-digits"]
        assert accuracy["x"] == [records[family, d]["params"] for d in (8, 14)]
        assert accuracy["y"] == [pytest.approx(1 - records[family, d]["test_error"]) for d in (8, 14)]
    assert curves["lesion_single-plain14-digits-s0"]["x"] == [1, 3]
    assert curves["lesion_random-plain14-digits-s0"]["y"] == [pytest.approx(0.3), pytest.approx(0.6)]
    assert curves["grad_norm_last_step-plain14-digits-s0"]["y"] == [0.75, 0.5]


@pytest.mark.slow
def test_a_submitit_sweep_writes_the_key_nowhere(tmp_path):
    (tmp_path / "home").mkdir()
    with comet_server("nothing") as url:
        env = clean_env(tmp_path, COMET_API_KEY=COMET_KEY, COMET_URL_OVERRIDE=url)
        sweep = ("train", "-m", "hydra/launcher=submitit_local", "arch=resnet", "arch.depth=8", *TINY)
        result = run_cli(*sweep, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (job_log,) = tmp_path.rglob(".submitit/*/*_log.out")  # the run's own output
    assert list(job_log.parent.glob("*.pkl")) and list(tmp_path.rglob("*.zip"))
    assert holding(tmp_path, COMET_KEY) == [] and COMET_KEY not in result.stdout + result.stderr
    (line,) = comet_lines(job_log.read_text() + next(job_log.parent.glob("*_log.err")).read_text())
    assert "connection refused; logging offline instead" in line
    assert comet_lines(result.stdout + result.stderr) == []
