"""LLaMA-Board in headless Chromium, one Board and one browser for the whole session: the page as it opens (SF-Med
model entries and templates, a compute type this CPU host runs, datasets with missing files left out), the Online
merging and Preference audit accordions (Preview command, checks before a run), a DPO + OnDARE run started from
the page, its configuration saved and reloaded, the Chinese labels, and a broken dataset_info.json explained.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sfmed_lf.board import compute_type_that_runs
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
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MERGING = {  # what the test types into the Online merging accordion, and what must come out of it
    "Merging method": ("OnDARE", "sfmed_merge_method", "ondare"),
    "θ_base: base model": ("saves/tiny/pt", "sfmed_merge_base_model", "saves/tiny/pt"),
    "Keep probability p": ("0.3", "sfmed_merge_keep_prob", 0.3),
    "Task-vector weight α": ("0.01", "sfmed_merge_alpha", 0.01),
    "Mask seed": ("7", "sfmed_merge_seed", 7),
    "Rescale": ("inverse_p", "sfmed_merge_rescale", "inverse_p"),  # a dropdown, not its default
}
DROPDOWNS = ("Merging method", "Rescale")


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
    """The project's data and dataset_info.json, with the tiny CPT and SFT models where the demo writes them, and a
    folder whose dataset_info.json is broken."""
    root.mkdir()
    shutil.copy2(REPO_ROOT / "dataset_info.json", root)
    shutil.copytree(REPO_ROOT / "data", root / "data")
    for stage in ("pt", "sft"):
        shutil.copytree(pipeline[stage], root / "saves" / "tiny" / stage)
    (root / "broken").mkdir()
    (root / "broken" / "dataset_info.json").write_text('{"sfmed_sample_dpo_pairs": {"file_name": ')
    return root


def open_page(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[aria-label='Model name']"))
    # the labels arrive with the language, after the page's load event
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.XPATH, "//span[normalize-space()='Compute type']"))


def dropdown(driver, label: str, choice: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(choice, Keys.ENTER)
    WebDriverWait(driver, 30).until(lambda d: field.get_attribute("value") == choice)


def dropdown_value(driver, label: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']").get_attribute("value")


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
    if text:
        field.send_keys(text)
    field.send_keys(Keys.TAB)


def click(driver, text: str) -> None:
    driver.find_element(By.XPATH, f"//button[starts-with(normalize-space(), '{text}')]").click()


def dataset_options(driver, settled: Callable[[list[str]], bool]) -> list[str]:
    """The Dataset dropdown's options once `settled(options)` holds; the Board lists the datasets when the dropdown
    gets focus, so the previous stage's list shows until the answer arrives."""
    field = labelled(driver, "Dataset", "input")
    field.click()
    seen: list[list[str]] = []

    def options(d) -> list[str] | None:
        seen.append([o.text for o in d.find_elements(By.CSS_SELECTOR, "ul.options li")])
        return seen[-1] if settled(seen[-1]) else None

    try:
        return WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,)).until(options)
    except TimeoutException:
        raise AssertionError(f"the Dataset dropdown lists {seen[-1:]}") from None
    finally:
        field.send_keys(Keys.ESCAPE)


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def shows(driver, text: str, timeout: float = 30) -> bool:
    """Whether `text` is shown on the page within `timeout` seconds (as rendered: code blocks are highlighted
    token by token, so the page source splits a command line into spans)."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: text in page_text(d))
        return True
    except TimeoutException:
        return False


def preview_shows(driver, text: str) -> None:
    """Preview command; its output (the command, or why the configuration cannot run) contains `text`."""
    click(driver, "Preview command")
    assert shows(driver, text), f"{text!r} not on the page after Preview command"


def scroll_to(driver, button: str) -> None:
    driver.execute_script(
        "arguments[0].scrollIntoView()", driver.find_element(By.XPATH, f"//button[normalize-space()='{button}']")
    )


def screenshot(driver, name: str, element=None) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.execute_script("document.activeElement && document.activeElement.blur()")  # no caret in the picture
    if element is None:
        driver.save_screenshot(str(ARTIFACTS / name))
    else:
        element.screenshot(str(ARTIFACTS / name))


def accordion(driver, label: str):
    """The accordion block whose header button reads `label`."""
    header = driver.find_element(By.XPATH, f"//button[.//span[normalize-space()='{label}']]")
    return header.find_element(By.XPATH, "./ancestor::div[contains(@class, 'block')][1]")


def test_the_board_speaks_sfmed(pipeline, tmp_path, browser):
    project = project_copy(tmp_path / "project", pipeline)
    board = Board(project)
    try:
        open_page(browser, board.url)
        # --- as it opens: a compute type this CPU host runs, with the reason beside it
        runnable = compute_type_that_runs()  # fp32 on a CPU host
        assert dropdown_value(browser, "Compute type") == runnable
        if runnable != "bf16":
            assert shows(browser, f"This host has no GPU with bf16 support: {runnable} is selected.")
        # --- model entries name the step that wrote them, and point at the demo's outputs
        dropdown(browser, "Model name", "SF-Med-Tiny-SFT")
        template = browser.find_element(By.CSS_SELECTOR, "input[aria-label='Chat template']")
        WebDriverWait(browser, 30).until(lambda d: template.get_attribute("value") == "sfmed")
        assert labelled(browser, "Model path", "textarea").get_attribute("value") == "saves/tiny/sft"
        template.click()
        # Gradio marks the selected option with a check mark on a line of its own
        templates = [o.text.split()[-1] for o in browser.find_elements(By.CSS_SELECTOR, "ul.options li")]
        assert {"sfmed", "sfmed_multiturn"} <= set(templates), [t for t in templates if "sfmed" in t]
        template.send_keys(Keys.ESCAPE)
        # --- SFT datasets: those whose files are missing (data/converted/* before conversion) are left out, and said
        assert labelled(browser, "Data dir", "textarea").get_attribute("value") == "."
        sft_datasets = dataset_options(browser, lambda names: "sfmed_sample_sft_single" in names)
        assert {"sfmed_sample_sft_multiturn", "sfmed_sample_pt_medical", "sfmed_hub_alpaca_zh"} <= set(sft_datasets)
        assert not [name for name in sft_datasets if name.startswith(("sfmed_sft_cmexam", "sfmed_pt_cmtmedqa"))]
        assert shows(browser, "dataset(s) not listed: their files are missing (e.g. data/converted/")
        merging_header = "//button[.//span[normalize-space()='Online merging (SF-Med)']]"
        assert not [e for e in browser.find_elements(By.XPATH, merging_header) if e.is_displayed()], "a DPO option"
        dropdown(browser, "Finetuning method", "full")
        dropdown(browser, "Stage", "DPO")
        dataset_options(browser, lambda names: names == ["sfmed_sample_dpo_pairs"])  # the ranking datasets only
        dataset = labelled(browser, "Dataset", "input")
        dataset.click()
        dataset.send_keys("sfmed_sample_dpo_pairs", Keys.ENTER, Keys.ESCAPE)
        set_text(browser, "Max samples", "24")  # 6 steps of 4 pairs
        set_text(browser, "Epochs", "1")
        set_number(browser, "Cutoff length", 256)
        set_number(browser, "Batch size", 4)
        set_number(browser, "Gradient accumulation", 1)
        click(browser, "Extra configurations")
        set_number(browser, "Logging steps", 1)
        extra = {"optim": "adamw_torch", "preprocessing_num_workers": 1, "dataloader_num_workers": 0}
        set_text(browser, "Extra arguments", json.dumps(extra))

        # --- Online merging accordion, shown for DPO, with each option's help
        browser.find_element(By.XPATH, merging_header).click()
        assert shows(browser, "p: fraction of entries kept by every sparsification"), "help from sfmed_lf.hparams"
        dropdown(browser, "Merging method", "OnDARE")
        preview_shows(browser, "Online merging: sfmed_merge_method=ondare: set `sfmed_merge_base_model`")
        for label, (typed, _option, _value) in list(MERGING.items())[1:]:
            (dropdown if label in DROPDOWNS else set_text)(browser, label, typed)
        set_text(browser, "Keep probability p", "2")
        preview_shows(browser, "keep_prob (p) must be in (0, 1], got 2.0")
        set_text(browser, "Keep probability p", "0.3")
        screenshot(browser, "board_online_merging_accordion.png", accordion(browser, "Online merging (SF-Med)"))

        # --- Preference audit accordion: the audit is read and ranked before a run
        click(browser, "Preference audit (SF-Med)")
        set_text(browser, "Audit file", "no/such/audit.jsonl")
        preview_shows(browser, "Preference audit: sfmed_pref_audit: no/such/audit.jsonl does not exist")
        rows = [{"key": f"pair-{i}", "mean_strength": i / 10} for i in range(10)]
        (project / "audit.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        set_text(browser, "Audit file", "audit.jsonl")
        set_text(browser, "Flip fraction", "0.6")
        set_text(browser, "Drop fraction", "0.6")
        preview_shows(browser, "Preference audit: flip and drop selections overlap")
        set_text(browser, "Audit file", "")  # the test's audit has no rows of sfmed_sample_dpo_pairs

        # --- Preview command shows the flags the accordion set
        click(browser, "Preview command")
        flags = [f"--{option} {value}" for _typed, option, value in MERGING.values()]
        for flag in flags:
            assert shows(browser, flag), f"{flag} missing from the previewed command"
        assert "--sfmed_pref_audit" not in page_text(browser), "an empty audit file sends no audit option"
        scroll_to(browser, "Preview command")  # the command is printed below the buttons
        screenshot(browser, "board_preview_command.png")

        # --- the configuration is saved through the Board
        config = browser.find_element(By.CSS_SELECTOR, "input[aria-label='Config path']")
        config.send_keys(Keys.CONTROL, "a")
        config.send_keys("sfmed_merging.yaml", Keys.ENTER)
        click(browser, "Save arguments")
        assert shows(browser, "Arguments have been saved at: llamaboard_config/sfmed_merging.yaml")

        # --- the DPO + OnDARE run from this page: the log states the merging settings, then the summary
        click(browser, "Start")
        WebDriverWait(browser, 600, poll_frequency=2).until(
            lambda d: "Finished." in d.page_source or "Failed." in d.page_source
        )
        assert "Finished." in browser.page_source, (project / "webui.log").read_text()[-4000:]
        log_box = page_text(browser)
        for line in (
            "SF-Med online merging: method=ondare p=0.3 alpha=0.01 rescale=inverse_p seed=7",
            "SF-Med online merging: tau' memory",
            "Online merging summary (sfmed_online_merging.json):",
            '"keep_prob": 0.3',
        ):
            assert line in log_box, f"{line!r} not in the log box"
        # LLaMA-Board draws the loss curve with matplotlib; Gradio shows it as an image in the plot block.
        loss_plot = WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='matplotlib'] img")
        )
        assert loss_plot[0].get_attribute("src").startswith("data:image/"), "the loss curve is an inline image"
        assert browser.execute_script("return arguments[0].naturalWidth", loss_plot[0]) > 0, "and it decoded"
        scroll_to(browser, "Start")  # the log box and the loss curve are below the buttons
        screenshot(browser, "board_dpo_online_merging.png")
        run_dirs = list((project / "saves" / "SF-Med-Tiny-SFT" / "full").iterdir())
        assert len(run_dirs) == 1
        report = read_json(run_dirs[0] / "sfmed_online_merging.json")
        assert {key: report[key] for key in ("method", "keep_prob", "alpha", "rescale", "seed")} == {
            "method": "ondare",
            "keep_prob": 0.3,
            "alpha": 0.01,
            "rescale": "inverse_p",
            "seed": 7,
        }
        run_args = yaml.safe_load((run_dirs[0] / "training_args.yaml").read_text())
        assert {option: run_args[option] for _t, option, _v in MERGING.values()} == {
            option: value for _t, option, value in MERGING.values()
        }
        mixed = [key for key in ("fp16", "bf16", "pure_bf16") if run_args.get(key)]
        assert mixed == ([] if runnable == "fp32" else [runnable]), "the page's compute type reached the run"
        assert read_json(run_dirs[0] / "trainer_state.json")["global_step"] == 6
        assert (run_dirs[0] / "training_loss.png").is_file()

        # --- a fresh page reloads the saved configuration with the same merging values
        open_page(browser, board.url)
        assert dropdown_value(browser, "Stage") != "DPO"
        dropdown(browser, "Config path", "sfmed_merging.yaml")
        click(browser, "Load arguments")
        assert shows(browser, "Arguments have been restored.")
        WebDriverWait(browser, 30).until(lambda d: dropdown_value(d, "Stage") == "DPO")
        browser.find_element(By.XPATH, merging_header).click()
        for label, (typed, _option, _value) in MERGING.items():
            if label in DROPDOWNS:
                assert dropdown_value(browser, label) == typed, label
            else:
                assert labelled(browser, label, "textarea").get_attribute("value") == typed, label

        # --- checks before a run: bf16 on a host without it is refused with the fix
        if runnable != "bf16":
            # LF's stage change clears the dataset the configuration restored; choose it again
            dataset_options(browser, lambda names: names == ["sfmed_sample_dpo_pairs"])
            labelled(browser, "Dataset", "input").send_keys("sfmed_sample_dpo_pairs", Keys.ENTER, Keys.ESCAPE)
            dropdown(browser, "Compute type", "bf16")
            preview_shows(
                browser, f"Compute type bf16 needs a GPU with bf16 support, which this host lacks: choose {runnable}"
            )

        # --- a broken dataset_info.json is explained under the Dataset dropdown
        set_text(browser, "Data dir", "broken")
        labelled(browser, "Dataset", "input").click()
        explanation = WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.XPATH, "//*[contains(text(), 'dataset_info.json cannot be read')]")
        )
        assert explanation[0].is_displayed()
        assert "Expecting value: line 1" in explanation[0].text, "the JSON error and its position are shown"
        screenshot(browser, "board_broken_dataset_info.png")

        # --- Chinese labels through LLaMA-Board's locale mechanism
        dropdown(browser, "Language", "zh")
        for label in ("在线合并（SF-Med）", "合并方法", "保留概率 p", "任务向量权重 α", "偏好数据审计（SF-Med）"):
            assert shows(browser, label), f"Chinese label {label!r} missing"
        assert shows(browser, "p：每次稀疏化保留的元素比例"), "Chinese help"
        screenshot(browser, "board_online_merging_zh.png", accordion(browser, "在线合并（SF-Med）"))
    except BaseException:
        screenshot(browser, "board_failure.png")
        raise
    finally:
        board.stop()
