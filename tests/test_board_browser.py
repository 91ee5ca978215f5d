"""LLaMA-Board in headless Chromium: SF-Med model entry, template and datasets, a DPO run with online merging
started from the page, and a visible error for a broken dataset_info.json. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import REPO_ROOT, VENV_BIN, read_json

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = REPO_ROOT / "test-artifacts"
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them as root)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only with a browser present
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class Board:
    """`llamafactory-cli webui` started in `project`, as a user starts it from the project root."""

    def __init__(self, project: Path) -> None:
        self.port = free_port()
        self.log = project / "webui.log"
        env = {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": self.port,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
        self.process = subprocess.Popen(
            [str(VENV_BIN / "llamafactory-cli"), "webui"],
            cwd=project,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=5)
                return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()[-4000:]
                assert time.monotonic() < deadline, "LLaMA-Board did not come up in 180 s"
                time.sleep(1)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)  # the Board's training subprocess too
        self.process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,3000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def project_copy(root: Path, pipeline: dict[str, Path]) -> Path:
    """The project's data and dataset_info.json, with the tiny SFT model where the SF-Med-Tiny-Chat entry expects it."""
    root.mkdir()
    shutil.copy2(REPO_ROOT / "dataset_info.json", root)
    shutil.copytree(REPO_ROOT / "data", root / "data")
    shutil.copytree(pipeline["sft"], root / "models" / "sfmed-tiny")
    return root


def dropdown(driver, label: str, choice: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(choice, Keys.ENTER)
    WebDriverWait(driver, 30).until(lambda d: field.get_attribute("value") == choice)


def labelled(driver, label: str, tag: str):
    return driver.find_element(By.XPATH, f"//span[normalize-space()='{label}']/ancestor::label[1]//{tag}")


def set_number(driver, label: str, value: int) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"input[aria-label='number input for {label}']")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def set_text(driver, label: str, text: str) -> None:
    field = labelled(driver, label, "textarea")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text, Keys.TAB)


def test_dpo_with_online_merging_from_the_board(pipeline, tmp_path, browser):
    project = project_copy(tmp_path / "project", pipeline)
    board = Board(project)
    try:
        browser.get(board.url)
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[aria-label='Model name']"))
        dropdown(browser, "Model name", "SF-Med-Tiny-Chat")
        template = browser.find_element(By.CSS_SELECTOR, "input[aria-label='Chat template']")
        WebDriverWait(browser, 30).until(lambda d: template.get_attribute("value") == "sfmed")
        assert labelled(browser, "Model path", "textarea").get_attribute("value") == "models/sfmed-tiny"
        template.click()
        # Gradio marks the selected option with a check mark on a line of its own
        templates = [o.text.split()[-1] for o in browser.find_elements(By.CSS_SELECTOR, "ul.options li")]
        assert {"sfmed", "sfmed_multiturn"} <= set(templates), [t for t in templates if "sfmed" in t]
        template.send_keys(Keys.ESCAPE)
        dropdown(browser, "Finetuning method", "full")
        dropdown(browser, "Stage", "DPO")
        assert labelled(browser, "Data dir", "textarea").get_attribute("value") == "."
        dataset = labelled(browser, "Dataset", "input")
        dataset.click()
        options = WebDriverWait(browser, 30).until(
            lambda d: [o.text for o in d.find_elements(By.CSS_SELECTOR, "ul.options li")] or None
        )
        assert options == ["sfmed_dpo_pairs"], "a DPO stage lists the ranking datasets only"
        dataset.send_keys("sfmed_dpo_pairs", Keys.ENTER)
        dropdown(browser, "Compute type", "fp32")
        set_number(browser, "Cutoff length", 256)
        set_number(browser, "Batch size", 4)
        set_number(browser, "Gradient accumulation", 1)
        browser.find_element(By.XPATH, "//button[starts-with(normalize-space(), 'Extra configurations')]").click()
        extra = {
            "optim": "adamw_torch",
            "max_steps": 6,
            "logging_steps": 1,
            "sfmed_merge_method": "ondare",
            "sfmed_merge_base_model": str(pipeline["pt"]),
            "sfmed_merge_keep_prob": 0.3,
            "sfmed_merge_alpha": 0.01,
            "dataloader_num_workers": 0,
        }
        set_text(browser, "Extra arguments", json.dumps(extra))
        browser.find_element(By.XPATH, "//button[normalize-space()='Start']").click()
        WebDriverWait(browser, 600, poll_frequency=2).until(
            lambda d: "Finished." in d.page_source or "Failed." in d.page_source
        )
        assert "Finished." in browser.page_source, (project / "webui.log").read_text()[-4000:]
        # LLaMA-Board draws the loss curve with matplotlib; Gradio shows it as an image in the plot block.
        loss_plot = WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='matplotlib'] img")
        )
        assert loss_plot[0].get_attribute("src").startswith("data:image/"), "the loss curve is an inline image"
        assert browser.execute_script("return arguments[0].naturalWidth", loss_plot[0]) > 0, "and it decoded"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "board_dpo_online_merging.png"))
        run_dirs = list((project / "saves" / "SF-Med-Tiny-Chat" / "full").iterdir())
        assert len(run_dirs) == 1
        report = read_json(run_dirs[0] / "sfmed_online_merging.json")
        assert (report["method"], report["keep_prob"]) == ("ondare", 0.3)
        assert read_json(run_dirs[0] / "trainer_state.json")["global_step"] == 6
        assert (run_dirs[0] / "training_loss.png").is_file()
    finally:
        board.stop()


def test_broken_dataset_info_is_shown_in_the_page(pipeline, tmp_path, browser):
    project = project_copy(tmp_path / "project", pipeline)
    (project / "dataset_info.json").write_text('{"sfmed_dpo_pairs": {"file_name": ')
    board = Board(project)
    try:
        browser.get(board.url)
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[aria-label='Stage']"))
        labelled(browser, "Dataset", "input").click()  # the Board lists the datasets when the dropdown gets focus
        explanation = WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.XPATH, "//*[contains(text(), 'dataset_info.json cannot be read')]")
        )
        assert explanation[0].is_displayed()
        assert "Expecting value: line 1" in explanation[0].text, "the JSON error and its position are shown"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "board_broken_dataset_info.png"))
    finally:
        board.stop()
