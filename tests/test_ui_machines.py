"""The web UI's machines page in a real headless Chromium (tests/ui_helpers.py), against
`pithos serve --compute` with its local agent booting the tiny test guest under qemu
(tests/compute_helpers.py; TCG where there is no KVM): a machine created from an image and a
flavor in three clicks, its state followed live by the page's polling (no reload), its
console log, stop, start, reboot and delete.  Every wait is bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By

from tests.compute_helpers import BOOT_TIMEOUT_S, Cloud, guest_files, needs_qemu
from tests.ui_helpers import Page, chromium

pytestmark = needs_qemu


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    c = Cloud()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def page(cloud: Cloud, tmp_path_factory) -> Iterator[Page]:
    driver = chromium(str(tmp_path_factory.mktemp("ui-machines-downloads")))
    try:
        yield Page(driver, cloud.url, "machines")
    finally:
        driver.quit()


def state(p: Page) -> str:
    cells = p.els("#machines-body tr td.state")
    return cells[0].text if cells else ""


def wait_state(p: Page, want: str, seen: list[str]) -> None:
    """Until the page shows `want` with no task in progress, noting each state it showed."""
    def shows(_: object) -> bool:
        now = state(p)
        if now and (not seen or seen[-1] != now):
            seen.append(now)
        return now == want
    p.wait(shows, timeout_s=BOOT_TIMEOUT_S, message=f"the machine never showed {want}: {seen}")


def test_create_in_three_clicks_live_state_console_and_actions(page: Page,
                                                                cloud: Cloud) -> None:
    guest = guest_files()
    kernel = cloud.image(guest["kernel"], "guest-kernel", disk_format="aki",
                         container_format="aki")
    ramdisk = cloud.image(guest["initrd"], "guest-ramdisk", disk_format="ari",
                          container_format="ari")
    # The guest stays up until its power button (a stop), so the states are the server's.
    cloud.image(guest["disk"], "tiny-guest", kernel_id=kernel, ramdisk_id=ramdisk,
                os_command_line="quiet pithos.net=0 pithos.after=wait")
    p = page
    p.sign_in("admin:admin", cloud.key)
    p.click("#nav-machines")
    p.visible("#image-choices input")
    # Only bootable images are offered (not the kernel and ramdisk).
    assert [e.text for e in p.els("#image-choices label")] == ["tiny-guest (raw)"]
    p.shot("machines-empty")
    # Three clicks: an image, a flavor, create.
    p.el("#image-choices input").click()
    next(label for label in p.els("#flavor-choices label")
         if label.text.startswith("m1.tiny")).find_element(By.TAG_NAME, "input").click()
    p.d.execute_script("window.pithosTestMark = 'same page'")
    p.el("#create-machine").click()
    p.status_says("is being created")
    seen: list[str] = []
    wait_state(p, "ACTIVE", seen)
    # Followed live by the page's polling: the same page, never reloaded.
    assert p.d.execute_script("return window.pithosTestMark") == "same page"
    p.shot("machines-active")
    # At phone width: nothing wider than the screen.
    p.d.set_window_size(390, 844)
    try:
        assert p.d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1")
        p.shot("machines-phone")
    finally:
        p.d.set_window_size(1280, 900)
    # The console log, until the guest says it is up.
    def booted(_: object) -> bool:
        p.click('#machines-body button[aria-label^="Console"]')
        return "PITHOS-GUEST-READY" in p.el("#console-text").text
    p.wait(booted, timeout_s=BOOT_TIMEOUT_S, message="the console never showed the guest up")
    assert "PITHOS-GUEST-BOOTED" in p.el("#console-text").text
    p.shot("machines-console")
    p.click("#console-close")
    # Stop, start, reboot, each followed to its end.
    for button, want in (("Stop", "SHUTOFF"), ("Start", "ACTIVE"), ("Reboot", "ACTIVE")):
        seen = []
        p.click(f'#machines-body button[aria-label^="{button}"]')
        p.status_says(f"is {button.lower()}")
        wait_state(p, want, seen)
    p.shot("machines-after-actions")
    # Delete, after the confirmation: the row goes.
    p.click('#machines-body button[aria-label^="Delete"]')
    p.wait(lambda d: d.switch_to.alert, message="no confirmation asked")
    p.d.switch_to.alert.accept()
    p.status_says("is being deleted")
    p.wait(lambda d: not p.els("#machines-body tr"), timeout_s=BOOT_TIMEOUT_S,
           message="the deleted machine is still listed")
    assert p.visible("#machines-empty").text == "No machines yet."
