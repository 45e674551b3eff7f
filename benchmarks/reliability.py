"""Hostile probes against the real service and pipeline, counted: what was tried, what happened.

    python benchmarks/reliability.py [--examples 300] [--rounds 4] [--events 400]   # after `make run`

* schemathesis (all checks, every phase incl. stateful; tests/schemathesis.toml) against a real
  `bentoml serve` of the production bento, with and without the API key. `server_errors` counts 5xx
  in the server's own access log, not in schemathesis' verdict.
* A planted e-mail address is sent as user_id to every endpoint (good and bad requests); the server
  log and the feedback log are then searched for it (`planted_email_found` must be 0).
* feedback_sigkill: rounds of two threads streaming /feedback (a share of them re-sent, as a client
  retrying would), SIGKILL of the server and all workers mid-stream, restart on the same log. Every
  event acknowledged with 200 must be stored once (`lost`, `duplicated`).
* group_kill: `causalrec serve`, `kill -9` of its process group, rounds: workers still running 5 s later
  (`orphan_workers_after_kill`), the next start binding the same port, the killed one's temp directory.
* loop: every event the service acknowledged in this run is exported and the merged data validates
  (`accepted_then_blocked`: acknowledged but not exported); one poison line of each class that used to be
  acknowledged (unknown item, outcome 2 / -1 / 1e9, unknown model version), written into a copy of the
  log, is quarantined with its rule; ingest twice in two processes (different PYTHONHASHSEED) gives the
  same bytes (`data_version_stable`).
* bad_inputs / bad_params: the hand-made bad data files and params files of tests/test_bad_input.py
  and tests/test_config.py, each asserting that its error names the table/column/key; a case counts as
  rejected clearly when its test passes (`--no-pytest-probes` skips this part).

Writes results/reliability.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import requests

from _common import REPO, scratch_dir, write_result
from causalrec.config import load_params
from causalrec.pipeline.store import bentoml_env
from causalrec.registry import Registry
from causalrec.serving.feedback import read_events
from causalrec.serving.launch import BentoServer

KEY = "reliability-probe-key"
PLANTED = "planted.person+probe@example.com"


def fuzz(url: str, key: str | None, examples: int, seed: int) -> dict:
    """One schemathesis run; returns the number of requests it generated and its exit code."""
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(REPO / "tests" / "schemathesis.toml"),
           "run", f"{url}/docs.json", "--checks", "all", "-n", str(examples), "--seed", str(seed), "--no-color"]
    if key:
        cmd += ["-H", f"x-api-key: {key}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    found = re.search(r"(\d+) generated", proc.stdout)
    return {"requests": int(found.group(1)) if found else 0, "exit_code": proc.returncode,
            "summary": proc.stdout[-1500:] if proc.returncode else ""}


def recommender_workers(log: str) -> int:
    """The recommender workers that started (BentoML logs each one's index as it initialises)."""
    return len(set(re.findall(r"\[entry_service:causalrec-recommender:(\d+)\] Service causalrec-recommender initialized", log)))


def server_errors(log: str) -> int:
    """5xx answers in BentoML's access log lines (`... (status=503,...`)."""
    return len(re.findall(r"\(status=5\d\d", log))


def plant_email(url: str) -> list[int]:
    """The e-mail address as user_id in good and bad requests on every endpoint; returns the statuses."""
    headers = {"x-api-key": KEY}
    bodies = [("/recommend", {"user_id": PLANTED, "k": 3}), ("/recommend", {"user_id": PLANTED, "k": "three"}),
              ("/explain", {"user_id": PLANTED, "item_id": "no-such-item"}), ("/explain", {"user_id": PLANTED}),
              ("/feedback", {"event_id": "planted-1", "user_id": PLANTED, "item_id": "x", "outcome": 1,
                             "propensity": 2.0, "timestamp": "2026-01-01T00:00:00Z"})]
    items = requests.post(f"{url}/recommend", json={"user_id": PLANTED, "k": 1}, timeout=30).json()["items"]
    bodies.append(("/feedback", {"event_id": "planted-2", "user_id": PLANTED, "item_id": items[0]["item_id"],
                                 "outcome": 1, "propensity": items[0]["propensity"], "timestamp": "2026-01-01T00:00:00Z"}))
    statuses = [requests.post(f"{url}{path}", json=body, headers=headers, timeout=30).status_code for path, body in bodies]
    statuses.append(requests.post(f"{url}/feedback", data=json.dumps(bodies[-1][1]), timeout=30,
                                  headers={"content-type": "multipart/form-data", **headers}).status_code)
    return statuses


def sigkill_rounds(server: BentoServer, log_path: Path, rounds: int, events: int) -> dict:
    """Stream feedback, SIGKILL mid-stream, restart; acknowledged vs stored over all rounds."""
    acked: list[str] = []
    for r in range(rounds):
        server.start()
        stop, lock = threading.Event(), threading.Lock()

        def stream(worker: int, r: int = r, stop: threading.Event = stop, lock: threading.Lock = lock) -> None:
            i = 0
            while not stop.is_set():
                # every fourth request re-sends an earlier event: a client retrying after a timeout
                n = i - 3 if i % 4 == 3 else i
                event = {"event_id": f"r{r}-w{worker}-{n}", "user_id": f"u{n % 50:06d}", "item_id": "i000001",
                         "outcome": n % 2, "propensity": 0.5, "timestamp": "2026-11-01T07:00:00Z"}
                try:
                    resp = requests.post(f"{server.url}/feedback", json=event, headers={"x-api-key": KEY}, timeout=10)
                except requests.RequestException:
                    return
                if resp.status_code == 200:
                    with lock:
                        acked.append(event["event_id"])
                i += 1

        threads = [threading.Thread(target=stream, args=(w,)) for w in range(2)]
        [t.start() for t in threads]
        deadline = time.time() + 120
        while len({a for a in acked if a.startswith(f"r{r}-")}) < events and time.time() < deadline:  # distinct events
            time.sleep(0.02)
        server.stop(9)  # no clean shutdown, no flush
        stop.set()
        [t.join(timeout=15) for t in threads]
    stored = [e["event_id"] for e in read_events(log_path)]
    raw = [json.loads(x)["event_id"] for p in sorted(log_path.parent.glob(log_path.name + "*")) if not p.name.endswith(".lock")
           for x in p.read_text().splitlines() if x.strip().endswith("}")]
    unique_acked = set(acked)
    return {"rounds": rounds, "acknowledged": len(unique_acked), "acknowledged_requests": len(acked),
            "stored": len(set(stored)), "lost": len(unique_acked - set(stored)), "duplicated": len(raw) - len(set(raw))}


def group_kill_rounds(project: Path, tag: str, env: dict, work: Path, rounds: int) -> dict:
    """`causalrec serve`, then `kill -9` of its process group (what a container runtime or an operator's
    `kill -9 -PGID` does): how many of its workers still run 5 s later, whether the next start binds the
    same port, whether the killed server's temp directory was removed by that start."""
    import os
    import tempfile

    import psutil

    from causalrec.serving.launch import _descendants

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    cli = [str(Path(sys.executable).parent / "causalrec"), "serve", "--params", str(project / "params.yaml")]
    orphans, bound, stale, port, previous_tmp = 0, 0, 0, None, []
    for r in range(rounds + 1):
        server = BentoServer(tag, project, work / f"groupkill-{r}.log", env, command=cli)
        try:
            server.start(port=port)
        except RuntimeError:
            break
        bound += port is not None and server.url.endswith(f":{port}")
        stale += sum(p.exists() for p in previous_tmp)
        port = int(server.url.rsplit(":", 1)[1])
        if r == rounds:  # the last start only checks the port and the sweep
            server.stop()
            break
        workers = _descendants(server.proc.pid)
        previous_tmp = list(Path(tempfile.gettempdir()).glob(f"causalrec-serve-{server.proc.pid}-*"))
        os.killpg(server.proc.pid, 9)
        server.proc.wait(timeout=30)
        time.sleep(5)
        orphans += sum(map(running, workers))
        for pid in workers:  # leave nothing behind whatever happened
            if running(pid):
                os.kill(pid, 9)
        server.proc = None
    return {"rounds": rounds, "orphan_workers_after_kill": orphans, "restarts_bound_the_same_port": bound,
            "killed_servers_temp_dirs_left_after_restart": stale}


POISON = {"unknown item": {"item_id": "i-not-in-the-catalogue"}, "outcome 2": {"outcome": 2},
          "outcome -1": {"outcome": -1}, "outcome 1e9": {"outcome": 1e9},
          "unknown model version": {"model_version": "causalrec-recommender:neverregistered"}}


def loop_probe(params, feedback: Path, work: Path) -> dict:
    """Everything the service acknowledged in this run (schemathesis with the key, the planted events, the
    SIGKILL rounds) goes through export, ingest and the data suite; poison of each class a hostile test got
    acknowledged before, written into a copy of the log as an older release could have, is quarantined
    with its rule instead of blocking the export; and ingest gives the same bytes in two processes with
    different hash seeds (a stable data version). The ingest runs in a project of its own beside the
    served one (its params, this run's partitions), so the served project's data is not touched."""
    import hashlib
    import os
    import shutil

    import pandas as pd
    import yaml

    from causalrec.data.feedback import read_partitions
    from causalrec.serving.feedback import export_feedback
    from causalrec.validation import validate_data

    acknowledged = read_events(feedback)
    poisoned = feedback.with_name("poisoned.jsonl")  # beside the log: the same pseudonym key
    template = next(e for e in acknowledged if e["event_id"].startswith("r0-"))
    lines = [json.dumps({**template, "event_id": f"poison-{i}", **change}) for i, change in enumerate(POISON.values())]
    shutil.copy(feedback, poisoned)
    with open(poisoned, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    project = work / "loop-project"
    raw = yaml.safe_load((params.root / "params.yaml").read_text())
    raw["ingest"].update({k: str(getattr(params.ingest, k)) for k in ("source_path", "test_path") if getattr(params.ingest, k)})
    raw["paths"]["input_dirs"] = [str(d) for d in params.paths.input_dirs] + [str(params.root)]
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    exported, error = set(), None
    try:
        out = export_feedback(poisoned, params.paths.data_dir, project / "feedback_data", work / "validation_feedback",
                              work / "feedback" / "catalogue.sqlite", known_versions=set(Registry(params.paths.registry).state()["models"]),
                              max_quarantine_share=params.feedback.max_quarantine_share)
        exported = set(read_partitions(project / "feedback_data")["event_id"])
    except Exception as exc:  # counted: every acknowledged event is then blocked
        out, error = {}, f"{type(exc).__name__}: {str(exc)[:500]}"
    digests = []
    for seed in ("1", "2"):  # ingest: the source's tables + this run's partitions
        subprocess.run([str(Path(sys.executable).parent / "causalrec"), "ingest", "--params", str(project / "params.yaml")],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
        digests.append({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((project / "data").glob("*.parquet"))})
    try:
        validates, failures = validate_data(project / "data", work / "validation")["success"], []
    except Exception as exc:
        validates, failures = False, getattr(exc, "failures", None) or [f"{type(exc).__name__}: {str(exc)[:500]}"]
    quarantined = pd.read_parquet(next((project / "feedback_data" / "quarantine").glob("*-held.parquet"))) if out.get("quarantined") else None
    return {"acknowledged": len(acknowledged), "exported": len(exported),
            "accepted_then_blocked": len({e["event_id"] for e in acknowledged} - exported), "export_error": error,
            "ingested_data_validates": validates, "validation_failures": failures, "poison_written": len(lines),
            "poison_quarantined": 0 if quarantined is None else int(quarantined["event_id"].str.startswith("poison-").sum()),
            "quarantined_by_rule": out.get("quarantined_by_rule"), "data_version_stable": digests[0] == digests[1],
            "data_md5s": digests[0]}


def pytest_probes(work: Path) -> dict:
    """Run the bad-data and bad-params cases; a case is rejected clearly when its test passes."""
    out = {}
    for name, selector in (("bad_inputs", "tests/test_bad_input.py::test_bad_data_fails_validation_and_writes_nothing_downstream"),
                           ("bad_params", "tests/test_config.py")):
        report = work / f"{name}.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", selector, f"--junitxml={report}"],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
        cases = ET.parse(report).getroot().iter("testcase")
        if name == "bad_params":  # the malformed/ nonsensical params cases, not the loader's good-path tests
            cases = [c for c in cases if "malformed" in c.get("name") or "make_no_sense" in c.get("name")
                     or "outside_the_project" in c.get("name") or "missing_params" in c.get("name")]
        cases = list(cases)
        failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
        out[name] = {"tried": len(cases), "rejected_clearly": len(cases) - len(failed), "not_clear": failed}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=str(REPO), help="a project after `make run` (its champion bento is served)")
    ap.add_argument("--bento", default=None, help="bento tag (default: the champion's in --project's registry.json)")
    ap.add_argument("--examples", type=int, default=300, help="schemathesis examples per operation and phase")
    ap.add_argument("--rounds", type=int, default=4, help="SIGKILL rounds")
    ap.add_argument("--events", type=int, default=400, help="acknowledged events per round before the kill")
    ap.add_argument("--kill-rounds", type=int, default=3, help="kill -9 rounds of the `causalrec serve` process group")
    ap.add_argument("--no-pytest-probes", action="store_true", help="skip the bad data / params cases")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    project = Path(args.project).resolve()
    params = load_params(project / "params.yaml")
    bentoml_env(params)  # the project's own BentoML store, where `make run` built the bento (unless BENTOML_HOME is set)
    tag = args.bento or Registry(params.paths.registry).champion["bento_tag"]
    work = scratch_dir("reliability-")
    feedback = work / "feedback" / "fb.jsonl"
    # two recommender workers (concurrent writers of one feedback log), set through BentoML's own configuration
    env = {"CAUSALREC_API_KEY": KEY, "CAUSALREC_FEEDBACK_LOG": str(feedback),
           "CAUSALREC_CATALOGUE": str(work / "feedback" / "catalogue.sqlite"),
           "BENTOML_CONFIG_OVERRIDES": json.dumps({"services": {"causalrec-recommender": {"workers": 2}}})}
    server = BentoServer(tag, project, work / "serve.log", env)
    with server:
        runs = [fuzz(server.url, KEY, args.examples, 1), fuzz(server.url, None, args.examples, 2)]
        planted = plant_email(server.url)
    stored_planted = [e for e in read_events(feedback) if e["event_id"] == "planted-2"]
    serve_log = (work / "serve.log").read_text(errors="replace")
    logs = serve_log + feedback.read_text(errors="replace")
    figures = {
        "schemathesis": {"requests": sum(r["requests"] for r in runs), "server_errors": server_errors(serve_log),
                         "runs": runs, "checks": "all", "phases": "examples, coverage, fuzzing, stateful",
                         "with_key_and_without": True, "recommender_workers": recommender_workers(serve_log)},
        "privacy": {"planted_email_found": logs.count(PLANTED), "planted_statuses": planted,
                    "planted_feedback_stored_as": stored_planted[0]["user_id"][:5] + "..." if stored_planted else None,
                    "tracebacks_in_log": logs.count("Traceback")},
        "feedback_sigkill": sigkill_rounds(BentoServer(tag, project, work / "sigkill.log", env), feedback,
                                           args.rounds, args.events),
        "group_kill": group_kill_rounds(project, tag, env, work, args.kill_rounds),
    }
    figures["loop"] = loop_probe(params, feedback, work)
    figures.update({k: figures["loop"][k] for k in ("accepted_then_blocked", "data_version_stable")},
                   orphan_workers_after_kill=figures["group_kill"]["orphan_workers_after_kill"])
    if not args.no_pytest_probes:
        figures.update(pytest_probes(work))
    write_result("reliability", figures, args.out)
    print(json.dumps(figures, indent=2)[:3000])
    return figures


if __name__ == "__main__":
    main()
