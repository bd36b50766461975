"""Helpers of the web UI's browser tests (tests/test_ui_*.py): Debian's headless Chromium
driven by Selenium through chromium-driver (scripts/setup --test installs both; nothing
downloads a browser), one browser per test module, and the screenshots every page leaves.

Screenshots go to $PITHOS_UI_SCREENSHOTS, else <tmp>/pithos-ui-screenshots (CI keeps that
directory as an artefact)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 30  # the longest any step waits for the page (a bound, not a speed requirement)


def screenshot_dir() -> str:
    path = os.environ.get("PITHOS_UI_SCREENSHOTS") or os.path.join(
        tempfile.gettempdir(), "pithos-ui-screenshots")
    os.makedirs(path, exist_ok=True)
    return path


def chromium(download_dir: str) -> WebDriver:
    """A headless Chromium (1280x900), downloads into `download_dir`."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver "
                    "(scripts/setup --test installs them; as root: apt-get install -y "
                    "chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.add_argument("--headless=new")
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    for arg in ("--disable-dev-shm-usage", "--window-size=1280,900", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--metrics-recording-only"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": download_dir,
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    return driver


class Page:
    """The browser on one server's UI, with the waits and looks the tests share."""

    def __init__(self, driver: WebDriver, url: str, module: str) -> None:
        self.d = driver
        self.url = url
        self.module = module

    def shot(self, name: str) -> str:
        path = os.path.join(screenshot_dir(), f"{self.module}-{name}.png")
        self.d.save_screenshot(path)
        return path

    def wait(self, what: Callable[[WebDriver], Any], timeout_s: float = WAIT_S,
             message: str = "") -> Any:
        try:
            # A listing re-rendered between finding an element and asking about it leaves a
            # stale reference: the condition is asked again, as for one not there yet.
            return WebDriverWait(self.d, timeout_s, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,)
                                 ).until(what)
        except TimeoutException:
            self.shot("timeout")
            raise AssertionError(f"{message} (status: {self.text('status')!r}, error: "
                                 f"{self.text('error')!r})") from None

    def el(self, css: str) -> WebElement:
        return self.d.find_element(By.CSS_SELECTOR, css)

    def els(self, css: str) -> list[WebElement]:
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        found = self.d.find_elements(By.ID, element_id)
        return found[0].text if found else ""

    def visible(self, css: str) -> WebElement:
        return self.wait(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css)
                                         if e.is_displayed()), False),
                         message=f"{css} never showed")

    def click(self, css: str) -> None:
        self.visible(css).click()

    def status_says(self, words: str, timeout_s: float = WAIT_S) -> None:
        self.wait(lambda d: words in self.text("status"), timeout_s,
                  message=f"the status never said {words!r}")

    def error_says(self, words: str) -> str:
        self.wait(lambda d: words in self.text("error"),
                  message=f"the error box never said {words!r}")
        return self.text("error")

    def open(self) -> None:
        self.d.get(f"{self.url}/ui/")
        if self.d.get_cookies():  # another user's session: a fresh start
            self.d.delete_all_cookies()
            self.d.get(f"{self.url}/ui/")
        self.visible("#signin-user")

    def sign_in(self, user: str, key: str) -> None:
        self.open()
        self.el("#signin-user").send_keys(user)
        self.el("#signin-key").send_keys(key)
        self.el("#signin-submit").click()
        self.status_says(f"Signed in as {user}")
