"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against the server
started as a user starts it, on run directories that the test keeps writing."""

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import pytest

from racerl_jax.dashboard import synthetic

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def _need_browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("RACERL_REQUIRE_BROWSER"):  # CI (.ci/run) installs it: absent there is a failure
            pytest.fail(f"{CHROMIUM} is missing although RACERL_REQUIRE_BROWSER is set; apt-get install -y chromium")
        pytest.skip(f"no {CHROMIUM}: the browser test needs Debian's chromium (make browser, or apt-get install -y chromium)")
    return pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    oval = synthetic.Oval()
    rec = synthetic.recording(tmp_path / "recording", 300, oval)
    steps, train_dir = synthetic.training_run(tmp_path / "training", oval, steps=300)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "racerl_jax.dashboard", str(tmp_path / "recording"), str(train_dir),
                             "--port", str(port), "--refresh-ms", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"

    def up():
        try:
            return urllib.request.urlopen(url, timeout=1).status == 200
        except OSError:
            return proc.poll() is not None
    try:
        assert synthetic.wait_for(up, timeout=60), "the dashboard did not answer within 60 s"
        assert proc.poll() is None, proc.stdout.read()
        yield {"url": url, "rec": rec, "oval": oval, "steps": steps, "train": train_dir, "tmp": tmp_path}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        rec.close()
        steps.close()


JS_COUNT = """([id, name]) => {
    const el = document.getElementById(id);
    const g = el && el.querySelector('.js-plotly-plot');
    if (!g || !g._fullData) return -1;
    // _fullData: the traces as plotly.js drew them (typed arrays decoded)
    const t = g._fullData.find(t => t.name === name);
    return t && t.x ? t.x.length : -1;
}"""


def _count(page, graph: str, trace: str) -> int:
    return page.evaluate(JS_COUNT, [graph, trace])


def test_the_page_shows_the_recording_follows_telemetry_and_metrics_as_they_are_written_and_replays_laps(server):
    sync_api = _need_browser()
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(server["tmp"] / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=["--headless", *FLAGS],
                                                   viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.goto(server["url"])
            # the map: track edges, reference line and the recorded car's driven line
            page.wait_for_function(f"() => ({JS_COUNT})(['map', 'driven line']) > 0", timeout=30_000)
            assert _count(page, "map", "track edge") > 100
            assert _count(page, "map", "car") == 1
            # speed, throttle, brake and steering along the lap
            assert _count(page, "lap", "this lap") > 10
            page.wait_for_function("() => document.getElementById('status').innerText.includes('steps logged: 300')",
                                   timeout=10_000)

            # the run goes on: 100 more frames, and a metrics row in the training run
            for i in range(300, 400):
                server["rec"].frame(synthetic.frame(server["oval"], i))
            page.wait_for_function("() => document.getElementById('status').innerText.includes('steps logged: 400')",
                                   timeout=10_000)
            # (-1 while the figure re-renders on a loaded machine: wait for it rather than read it once)
            page.wait_for_function(f"() => ({JS_COUNT})(['training', 'training: critic_loss']) === 3", timeout=30_000)
            with open(server["train"] / "metrics.jsonl", "a") as f:
                f.write(json.dumps(synthetic.metrics_row(3)) + "\n")
            page.wait_for_function(f"() => ({JS_COUNT})(['training', 'training: critic_loss']) === 4", timeout=10_000)

            # the training run: its host-loop steps show the policy's decisions
            page.click("#run")
            page.locator(".dash-dropdown-option", has_text="training").click()
            page.wait_for_function(f"() => ({JS_COUNT})(['decisions', 'policy steer']) > 0", timeout=10_000)
            assert _count(page, "map", "best lap") > 10
            shot = server["tmp"] / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            if os.environ.get("RACERL_DASHBOARD_SCREENSHOT"):  # e.g. docs/img/dashboard.png for the README
                shutil.copyfile(shot, os.environ["RACERL_DASHBOARD_SCREENSHOT"])

            # replay: the recorded episode, then the evaluation laps, one slider step each
            page.get_by_text("replay", exact=True).click()
            label = "() => document.getElementById('item-label').innerText"
            page.wait_for_function(f"() => ({label})().startsWith('episode 0 (5 in all)')", timeout=10_000)
            page.locator("#item [role=slider]").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(f"() => ({label})().startsWith('eval 0 @ 10000 steps, lap 1')", timeout=10_000)
            page.wait_for_function(f"() => ({JS_COUNT})(['lap', 'this lap']) > 500", timeout=10_000)  # a whole lap
        finally:
            ctx.close()


def test_a_multi_track_runs_track_folders_are_listed_under_it_and_new_ones_join_as_they_are_written(tmp_path):
    from racerl_jax.dashboard.app import Board, DashboardConfig

    oval = synthetic.Oval()
    rec = synthetic.recording(tmp_path / "rec", 10, oval)
    rec.close()
    steps, run = synthetic.training_run(tmp_path / "multi", oval, evals=1, steps=5)
    steps.close()
    synthetic.training_run(run / "tracks" / "oval", oval, evals=1, steps=0)[0].close()
    (run / "tracks" / "not-a-folder.txt").write_text("x")
    board = Board(DashboardConfig(run_dirs=(str(tmp_path / "multi"), str(tmp_path / "rec")), refresh_ms=50))
    assert [r.name for r in board.runs] == ["multi", "multi / tracks/oval", "rec"]
    assert [r.name for r in board.top] == ["multi", "rec"]  # what the training curves compare
    oval_key = board.options()[1]["value"]

    # a track folder written later (the first evaluation of an eval track) joins in name order
    synthetic.training_run(run / "tracks" / "flowing", oval, evals=2, steps=0)[0].close()
    board.last_refresh = -1e9
    board.refresh()
    assert [o["label"] for o in board.options()] == ["multi", "multi / tracks/flowing", "multi / tracks/oval", "rec"]
    assert board.run(oval_key).path == run / "tracks" / "oval"  # a picked run stays picked
    flowing = board.run(board.options()[1]["value"])
    assert len(flowing.evals) == 2 and flowing.best_lap() is not None  # its own laps, on its own track
    assert board.run("nonsense") is board.runs[0]
