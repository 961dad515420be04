"""The chat page at GET / in a real headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): a typed message gets its streamed reply, and the stop button stops a reply."""

from __future__ import annotations

import shutil
import time

import pytest
from generation_helpers import write_model
from test_serve import generated, prompt_ids, running

import autolm

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from autolm.serve import create_app  # noqa: E402
from autolm.serve import engine as engine_module  # noqa: E402

TIMEOUT = 120


def _browser_paths() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = write_model(tmp_path_factory.mktemp("page") / "tiny", "llama", max_position_embeddings=4096)
    return autolm.AutoModelForCausalLM.from_pretrained(directory), autolm.AutoTokenizer.from_pretrained(
        directory
    )


@pytest.fixture
def browser():
    paths = _browser_paths()
    if paths is None:
        pytest.skip(
            "no chromium/chromedriver on PATH: `apt-get install chromium chromium-driver` "
            "(scripts/setup.sh test does it when it can)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=paths[1]))
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()


def wait_for(condition, what: str):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def set_field(driver, element_id: str, value: str) -> None:
    driver.execute_script("document.querySelector('details').open = true")  # the settings panel
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def test_page_streams_a_reply(tiny, browser, tmp_path):
    model, tok = tiny
    with running(create_app(model, tok, "tiny", max_context=4096)) as url:
        browser.get(url + "/")
        wait_for(lambda: browser.find_element(By.ID, "model").text == "tiny", "the model name")
        set_field(browser, "temperature", "0")
        set_field(browser, "max_tokens", "16")
        box = browser.find_element(By.ID, "prompt")
        box.send_keys("hello there")
        box.send_keys(Keys.ENTER)
        wait_for(lambda: "tokens/s" in browser.find_element(By.ID, "speed").text and "first after"
                 in browser.find_element(By.ID, "speed").text, "the reply to finish")  # fmt: skip
        replies = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        user = browser.find_elements(By.CSS_SELECTOR, ".msg.user")
        assert [u.text for u in user] == ["hello there"]
        want, _ = generated(model, tok, prompt_ids(tok, [{"role": "user", "content": "hello there"}]), 16)
        # the browser shows the text as typed; compare without the whitespace a browser may collapse
        assert replies[0].get_attribute("textContent") == want
        browser.save_screenshot(str(tmp_path / "chat_page.png"))
    assert (tmp_path / "chat_page.png").stat().st_size > 0


def test_stop_button_stops_the_reply(tiny, browser, tmp_path, monkeypatch):
    model, tok = tiny
    step = engine_module.Engine._step

    def slow_step(self):  # a reply long enough to be stopped on any machine
        time.sleep(0.02)
        step(self)

    monkeypatch.setattr(engine_module.Engine, "_step", slow_step)
    app = create_app(model, tok, "tiny", max_context=4096)
    engine = app.state.engine
    with running(app) as url:
        browser.get(url + "/")
        wait_for(lambda: browser.find_element(By.ID, "model").text == "tiny", "the model name")
        set_field(browser, "temperature", "1")
        set_field(browser, "max_tokens", "3000")
        box = browser.find_element(By.ID, "prompt")
        box.send_keys("tell me a story")
        box.send_keys(Keys.ENTER)
        reply = wait_for(
            lambda: [e for e in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant") if e.text],
            "streamed text",
        )[0]
        assert browser.find_element(By.ID, "send").get_attribute("disabled") is not None
        browser.find_element(By.ID, "stop").click()
        wait_for(lambda: "stopped" in reply.get_attribute("class"), "the reply to be marked stopped")
        assert browser.find_element(By.ID, "send").get_attribute("disabled") is None
        wait_for(lambda: engine.active == 0, "the server to free the row")
        assert engine.generated_tokens < 3000
        browser.save_screenshot(str(tmp_path / "chat_page_stopped.png"))
    assert (tmp_path / "chat_page_stopped.png").stat().st_size > 0
