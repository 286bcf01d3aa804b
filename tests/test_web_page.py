"""The web page at `/` of `csm serve`, driven in headless Chromium against a real server.

A `csm serve --model tiny-random` subprocess on 127.0.0.1 and Debian's `chromium` with its
`chromedriver` through Selenium (driver and browser paths given, so Selenium never tries to
download one). Skips where no Chromium is installed; CI's .ci/run installs it.

CSM_UPDATE_SCREENSHOT=1 rewrites docs/web-page.png (the README's picture of the page).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "web-page.png"
SAMPLE_RATE = 24_000
FRAME_S = 0.08
TIMEOUT = 60
API_KEY = "s3cret-key-for-the-page"


def _find(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name) or (name if os.path.isfile(name) else None)
        if found:
            return found
    return None


CHROMIUM = _find("CSM_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"))
CHROMEDRIVER = _find("CSM_CHROMEDRIVER", ("chromedriver", "/usr/lib/chromium/chromedriver"))

selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver "
           "(apt-get install chromium chromium-driver; .ci/run does it), or set CSM_CHROMIUM "
           "and CSM_CHROMEDRIVER")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`csm serve --model tiny-random` in a subprocess, on a free loopback port."""

    def __init__(self, tmp: Path, tiny_model: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        # its own $CSM_HOME (so voices uploaded here stay here), holding the tests' tiny model
        home = tmp / f"home-{self.port}"
        home.mkdir()
        (home / "tiny-random").symlink_to(tiny_model, target_is_directory=True)
        command = [sys.executable, "-c", "from dialogue.cli import main; main()", "serve",
                   "--model", "tiny-random", "--db", str(tmp / f"web-{self.port}.db"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                   *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CSM_HOME": str(home)}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env=env)

    def ready(self) -> "Server":
        """Wait until the model is loaded and the server answers."""
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            try:
                if httpx.get(self.url + "/health", timeout=5).json()["status"] == "ok":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "csm serve did not come up"
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def _browser(downloads: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required",  # Web Audio starts unprompted
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",  # a mic
                 "--window-size=1400,1000", "--force-device-scale-factor=1", "--lang=en-US",
                 "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager go online
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(TIMEOUT)
    return driver


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model_path):
    """The plain server and one with an API key, started together (both load the tiny model)."""
    tmp = tmp_path_factory.mktemp("web")
    started = {"plain": Server(tmp, tiny_model_path),
               "keyed": Server(tmp, tiny_model_path, "--api-key", API_KEY)}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["plain"].ready()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def page(server, downloads):
    driver = _browser(downloads)
    driver.get(server.url + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = TIMEOUT):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def click(driver, css: str) -> None:
    """Click once the element is shown and enabled (a button stays disabled until the page has
    finished what it started, which takes longer on a busy machine)."""
    element = wait(driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css)
                                           if e.is_displayed() and e.is_enabled()), False))
    element.click()


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def errors_in_console(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def field(driver, element_id: str, value: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    if value:
        element.send_keys(value)


def speak(driver, text: str, max_seconds: str = "2", seed: str = "") -> tuple[dict, set]:
    """Click Speak and watch the page until it is done: (its final report, states seen)."""
    field(driver, "speak-text", text)
    field(driver, "opt-max-length", max_seconds)
    field(driver, "opt-seed", seed)
    click(driver, "#speak-go")
    seen = set()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        state, chunks = js(driver, "const s = document.getElementById('speak-stats').dataset;"
                                   "return [s.state || '', s.chunks || '0'];")
        seen.add((state, int(chunks)))
        if state in ("done", "error"):
            break
        time.sleep(0.02)
    report = js(driver, "return {...document.getElementById('speak-stats').dataset};")
    return report, seen


def test_the_page_loads_offline_without_console_errors(page, server):
    assert page.title == "CSM speech server"
    assert errors_in_console(page) == []
    # everything it loaded came from this server
    urls = js(page, "return performance.getEntriesByType('resource').map(e => e.name);")
    assert urls and all(url.startswith(server.url + "/") for url in urls), urls
    reply = httpx.get(server.url + "/")
    assert reply.status_code == 200 and "default-src 'none'" in reply.headers["content-security-policy"]
    # the voice picker lists the server's voices
    voices = httpx.get(server.url + "/v1/voices").json()["data"]
    options = js(page, "return [...document.querySelectorAll('#speak-voice option')].map(o => o.value);")
    assert options == ["", *(v["id"] for v in voices)]  # presets (all the tiny model has)
    assert {v["type"] for v in voices} == {"preset"}
    # presets come with the model: they can be used, not removed
    assert js(page, "return document.querySelectorAll('#voice-list li[data-voice]').length") == len(voices)
    assert js(page, "return document.querySelectorAll('#voice-list button.remove').length") == 0


def test_speaking_streams_audio_as_it_arrives(page, server):
    report, seen = speak(page, "Streaming into the browser, one chunk at a time.", seed="7")
    assert report["state"] == "done", page.find_element(By.ID, "speak-error").text
    times = [int(t) for t in report["chunkTimes"].split()]
    chunks = int(report["chunks"])
    # several chunks, each played as it came: the page saw the stream in progress
    assert chunks > 1 and len(times) == chunks and times == sorted(times)
    assert any(state == "streaming" and 0 < n < chunks for state, n in seen), seen
    assert int(report["firstAudioMs"]) == times[0] < int(report["endMs"])
    # the duration the server reports (usage.output_tokens frames) is what arrived
    frames, samples = int(report["frames"]), int(report["samples"])
    assert frames > 0 and samples == round(frames * FRAME_S * SAMPLE_RATE)
    assert page.find_element(By.ID, "speak-server").text == f"{frames * FRAME_S:.2f} s ({frames} frames)"
    assert page.find_element(By.ID, "speak-seed").text == "7"
    assert float(page.find_element(By.ID, "speak-rtf").text) > 0
    assert report["output"] == "running"  # the Web Audio context played it
    # the same request straight to the API gives the same length of audio
    direct = httpx.post(server.url + "/v1/audio/speech", timeout=TIMEOUT, json={
        "model": "csm-1b", "input": "Streaming into the browser, one chunk at a time.",
        "voice": js(page, "return document.getElementById('speak-voice').value;"),
        "response_format": "pcm", "seed": 7, "max_audio_length_ms": 2000, "stream": False})
    assert len(direct.content) == 2 * samples
    assert errors_in_console(page) == []


def test_stop_hangs_up_and_the_server_cancels_the_generation(page, server):
    before = httpx.get(server.url + "/health").json()["cancelled"]
    field(page, "speak-text", "A long line that the listener stops early.")
    # 90 s (180 chunks) takes the tiny model long enough that the click lands before the end even
    # when the browser's round trips are slow on a busy machine; at 20 s it once came too late.
    field(page, "opt-max-length", "90")
    click(page, "#speak-go")
    wait(page, lambda d: d.find_element(By.ID, "speak-stats").get_attribute("data-state") == "streaming")
    click(page, "#speak-stop")
    wait(page, lambda d: d.find_element(By.ID, "speak-stats").get_attribute("data-state") == "stopped")
    wait(page, lambda d: httpx.get(server.url + "/health").json()["cancelled"] == before + 1)
    assert int(page.find_element(By.ID, "speak-stats").get_attribute("data-chunks")) < 180
    assert errors_in_console(page) == []


def test_an_invalid_request_shows_the_servers_message(page, server):
    report, _ = speak(page, "")
    assert report["state"] == "error"
    expected = httpx.post(server.url + "/v1/audio/speech", json={
        "model": "csm-1b", "input": ""}).json()["error"]["message"]
    shown = page.find_element(By.ID, "speak-error")
    assert shown.is_displayed() and expected in shown.text
    # the browser logs the refused request itself, and nothing else
    assert all("status of 400" in message for message in errors_in_console(page))


def _turns(driver) -> list[dict]:
    return js(driver, "return [...document.querySelectorAll('#turns li.turn:not(.live)')].map(li => ({"
                      "index: +li.dataset.index, duration: li.dataset.duration, played: li.dataset.played,"
                      "text: li.querySelector('.text').textContent,"
                      "who: li.querySelector('.who').textContent,"
                      "facts: li.querySelector('.facts').textContent}));")


def _add_turn(driver, speaker: int, text: str, count: int) -> None:
    click(driver, f"input[name='turn-speaker'][value='{speaker}']")
    field(driver, "turn-text", text)
    click(driver, "#turn-generate")
    wait(driver, lambda d: len(_turns(d)) == count
         or d.find_element(By.ID, "conv-error").is_displayed())
    assert not driver.find_element(By.ID, "conv-error").is_displayed(), \
        driver.find_element(By.ID, "conv-error").text


def _open_new_session(driver, name: str) -> None:
    field(driver, "session-id", name)
    click(driver, "#session-create")
    wait(driver, lambda d: d.find_element(By.ID, "session-title").text == name
         or d.find_element(By.ID, "conv-error").is_displayed())
    assert driver.find_element(By.ID, "session-title").text == name, \
        driver.find_element(By.ID, "conv-error").text


def test_a_conversation_is_built_replayed_undone_and_downloaded(page, server, downloads):
    field(page, "opt-max-length", "1.5")
    field(page, "opt-seed", "")
    _open_new_session(page, "web-test")
    listed = js(page, "return [...document.querySelectorAll('#session-list li')].map(li => li.dataset.session);")
    assert "web-test" in listed
    _add_turn(page, 0, "Did you hear the news?", 1)
    _add_turn(page, 1, "No, tell me everything.", 2)
    assert int(page.find_element(By.ID, "turn-status").get_attribute("data-chunks")) > 1

    stored = httpx.get(server.url + "/v1/sessions/web-test").json()
    turns = _turns(page)
    assert [t["text"] for t in turns] == [t["text"] for t in stored["turns"]]
    assert [t["who"] for t in turns] == ["Speaker 0", "Speaker 1"]
    for shown, kept in zip(turns, stored["turns"]):
        assert shown["duration"] == str(kept["duration_s"])
        assert f"seed {kept['seed']}" in shown["facts"]

    # replay both turns: each fetched with the page's headers and played from memory
    for index in (0, 1):
        click(page, f"#turns li[data-index='{index}'] button.play")
        wait(page, lambda d: _turns(d)[index]["played"] is not None)
    for shown, kept in zip(_turns(page), stored["turns"]):
        assert float(shown["played"]) == pytest.approx(kept["duration_s"], abs=0.01)

    # the whole conversation plays too
    click(page, "#session-play")
    wait(page, lambda d: d.find_element(By.ID, "session-play").get_attribute("data-played"))
    assert float(page.find_element(By.ID, "session-play").get_attribute("data-played")) == pytest.approx(
        sum(t["duration_s"] for t in stored["turns"]) + 0.3, abs=0.01)

    # speaker 1's voice is pinned as the session was created; pin another
    assert [v["voice"] for v in sorted(stored["voices"], key=lambda v: v["speaker"])] == [
        page.find_element(By.ID, "pin-0").get_attribute("value"),
        page.find_element(By.ID, "pin-1").get_attribute("value")]
    Select(page.find_element(By.ID, "pin-1")).select_by_value("conversational_a")
    wait(page, lambda d: "now speaks as conversational_a" in d.find_element(By.ID, "session-note").text)
    pins = httpx.get(server.url + "/v1/sessions/web-test").json()["voices"]
    assert {v["speaker"]: v["voice"] for v in pins}[1] == "conversational_a"

    click(page, "#turn-undo")
    wait(page, lambda d: len(_turns(d)) == 1)
    assert httpx.get(server.url + "/v1/sessions/web-test").json()["turn_count"] == 1
    assert "No, tell me everything." in page.find_element(By.ID, "session-note").text

    # a recorded turn: the browser's (fake) microphone, through MediaRecorder, as WAV
    click(page, "input[name='turn-speaker'][value='1']")
    field(page, "turn-text", "This one I said myself.")
    click(page, "#turn-record")
    wait(page, lambda d: d.find_element(By.ID, "turn-record").text.startswith("Stop ("))
    time.sleep(1.2)
    click(page, "#turn-record")
    wait(page, lambda d: d.find_element(By.ID, "turn-add-recording").is_displayed()
         or d.find_element(By.ID, "conv-error").is_displayed())
    click(page, "#turn-add-recording")
    wait(page, lambda d: len(_turns(d)) == 2 or d.find_element(By.ID, "conv-error").is_displayed())
    assert not page.find_element(By.ID, "conv-error").is_displayed(), page.find_element(By.ID, "conv-error").text
    stored = httpx.get(server.url + "/v1/sessions/web-test").json()
    assert [t["source"] for t in stored["turns"]] == ["generated", "recorded"]
    assert "recorded" in _turns(page)[1]["facts"]

    # the whole conversation, as one WAV file
    click(page, "#session-download")
    target = downloads / "web-test.wav"
    wait(page, lambda d: target.is_file() and target.stat().st_size > 44)
    with wave.open(str(target)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    whole = httpx.get(server.url + "/v1/sessions/web-test/audio",
                      params={"response_format": "wav", "pause_s": 0.3})
    with wave.open(io.BytesIO(whole.content)) as wav:
        assert seconds == wav.getnframes() / wav.getframerate()
    assert errors_in_console(page) == []


def _clip(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes((tone * 32767).astype("<i2").tobytes())
    return path


def test_a_voice_is_uploaded_with_the_servers_warnings_and_removed(page, server, tmp_path):
    field(page, "voice-name", "short-tone")
    field(page, "voice-transcript", "A short tone.")
    page.find_element(By.ID, "voice-file").send_keys(str(_clip(tmp_path / "tone.wav", 1.0)))
    click(page, "#voice-upload")
    wait(page, lambda d: d.find_element(By.ID, "voice-warnings").is_displayed()
         or d.find_element(By.ID, "voice-error").is_displayed())
    notes = page.find_element(By.ID, "voice-warnings").text
    assert "Added short-tone" in notes and int(
        page.find_element(By.ID, "voice-warnings").get_attribute("data-warnings")) >= 1
    listed = lambda d: js(d, "return [...document.querySelectorAll('#voice-list li')].map(li => li.dataset.voice);")  # noqa: E731
    assert "short-tone" in listed(page)  # listed before the page says "Added"
    assert "short-tone" in js(page, "return [...document.querySelectorAll('#speak-voice option')].map(o => o.value);")

    # the same name again: the server's 409, in the server's words
    field(page, "voice-name", "short-tone")
    field(page, "voice-transcript", "A short tone.")
    page.find_element(By.ID, "voice-file").send_keys(str(tmp_path / "tone.wav"))
    click(page, "#voice-upload")
    wait(page, lambda d: d.find_element(By.ID, "voice-error").is_displayed())
    assert "already exists" in page.find_element(By.ID, "voice-error").text

    groups = js(page, "return [...document.querySelectorAll('#speak-voice optgroup')].map(g => g.label);")
    assert groups == ["Presets", "Uploaded"]
    remove = page.find_element(By.CSS_SELECTOR, "#voice-list li[data-voice='short-tone'] button.remove")
    remove.click()
    remove.click()  # the second click confirms
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    if "delete" in paths.get("/v1/voices/{name}", {}):
        wait(page, lambda d: "short-tone" not in listed(d))
        assert "short-tone" not in [v["id"] for v in httpx.get(server.url + "/v1/voices").json()["data"]]
    else:  # a server that cannot remove voices yet: it says so, and the voice stays
        wait(page, lambda d: d.find_element(By.ID, "voice-error").text.startswith(
            "This server cannot remove voices"))
        assert "short-tone" in listed(page)
    errors_in_console(page)  # the 409 (and any 404) were expected


def test_with_an_api_key_the_page_asks_once_and_never_puts_it_in_a_url(servers, downloads):
    key = API_KEY
    server = servers["keyed"].ready()
    driver = _browser(downloads)
    try:
        driver.get(server.url + "/")
        wait(driver, lambda d: d.find_element(By.ID, "key-dialog").is_displayed())
        driver.find_element(By.ID, "key-input").send_keys("wrong\n")  # asked again, with the reason
        wait(driver, lambda d: d.find_element(By.ID, "key-error").is_displayed())
        assert "wrong API key" in driver.find_element(By.ID, "key-error").text
        field(driver, "key-input", key + "\n")
        wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        assert not driver.find_element(By.ID, "key-dialog").is_displayed()
        assert js(driver, "return document.querySelectorAll('#voice-list li[data-voice]').length") > 0
        field(driver, "opt-max-length", "1")
        _open_new_session(driver, "keyed")
        _add_turn(driver, 0, "Keyed turn.", 1)
        click(driver, "#turns li[data-index='0'] button.play")
        wait(driver, lambda d: _turns(d)[0]["played"] is not None)
        urls = js(driver, "return performance.getEntriesByType('resource').map(e => e.name);")
        assert urls and not any(key in url for url in urls)
        # a reload in the same tab does not ask again, and reopens the conversation
        driver.refresh()
        wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        assert not driver.find_element(By.ID, "key-dialog").is_displayed()
        assert driver.find_element(By.ID, "session-title").text == "keyed"
        assert len(_turns(driver)) == 1
    finally:
        driver.quit()


def test_screenshot_of_the_page(page, tmp_path):
    """The README's picture: a line spoken and a short conversation open."""
    field(page, "opt-max-length", "2")
    _open_new_session(page, "kitchen-chat")
    for count, (speaker, text) in enumerate([(0, "Is the oven still on?"),
                                             (1, "Yes, the bread needs ten more minutes."),
                                             (0, "Perfect, I will set a timer.")], start=1):
        _add_turn(page, speaker, text, count)
    report, _ = speak(page, "Hello! This is Sesame's conversational speech model, streaming "
                            "straight into your browser.", max_seconds="3", seed="42")
    assert report["state"] == "done"
    js(page, "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page, no scrollbar
        "width": 1360, "height": js(page, "return document.documentElement.scrollHeight;"),
        "deviceScaleFactor": 1, "mobile": False})
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1360, "height": js(page, "return document.documentElement.scrollHeight;"),
        "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.3)
    target = SCREENSHOT if os.environ.get("CSM_UPDATE_SCREENSHOT") == "1" else tmp_path / "page.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert page.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors_in_console(page) == []
