"""The web UI's file manager in a real headless Chromium (tests/ui_helpers.py), against a real
`pithos serve`: sign in, upload with a progress bar and by drag-and-drop, folders, download,
move, delete, share with another user who then sees it, a public link fetched without
signing in, restore an old version, the quota's message, phone width and the keyboard.
One server and one browser for the module; each test signs in afresh and works in a
container of its own.  Screenshots of each page: tests/ui_helpers.screenshot_dir()."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.conftest import PithosServer
from tests.ui_helpers import Page, chromium

T = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[PithosServer]:
    s = PithosServer(tmp_path_factory.mktemp("ui-files"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("ui-downloads"))


@pytest.fixture(scope="module")
def page(server: PithosServer, downloads: str) -> Iterator[Page]:
    driver = chromium(downloads)
    try:
        yield Page(driver, server.url, "files")
    finally:
        driver.quit()


def token(server: PithosServer, user: str = "test:tester", key: str = "testing") -> dict[str, str]:
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=T)
    return {"X-Auth-Token": r.headers["X-Auth-Token"]}


def new_container(p: Page, name: str) -> None:
    p.el("#new-container-name").send_keys(name)
    p.el("#new-container-form button").click()
    p.status_says(f"Container {name} created")
    p.wait(lambda d: name in p.text("crumbs"), message="the new container did not open")


def upload(p: Page, path: str) -> None:
    """Through the file input, as a user choosing a file."""
    p.d.execute_script('document.getElementById("status").textContent = ""')
    p.el("#upload-input").send_keys(path)
    p.status_says(f"{os.path.basename(path)} uploaded")


def row(p: Page, name: str) -> Any:
    return p.visible(f'#listing-body tr[data-name="{name}"]')


def saved_bytes(path: str) -> bytes | None:
    """A downloaded file's content, once the browser has finished saving it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def details(p: Page, name: str) -> None:
    def opened(_: object) -> bool:
        try:
            row(p, name).find_element(By.CSS_SELECTOR, "td:first-child button").click()
        except StaleElementReferenceException:
            return False  # the listing was redrawn between the find and the click
        return True

    p.wait(opened, message=f"could not open the details of {name}")
    p.wait(lambda d: p.text("details-name") == name, message=f"no details of {name}")


def test_sign_in_upload_with_progress_folders_download_move_delete(page: Page,
                                                                    server: PithosServer,
                                                                    downloads: str,
                                                                    tmp_path) -> None:
    p = page
    p.open()
    p.shot("signin")
    # A wrong key: said in words, still on the sign-in page.
    p.el("#signin-user").send_keys("test:tester")
    p.el("#signin-key").send_keys("wrong")
    p.el("#signin-submit").click()
    assert p.error_says("Wrong user or key") == "Wrong user or key"
    p.sign_in("test:tester", "testing")
    new_container(p, "docs")
    # A file big enough to be sent in several parts: the bar follows the upload's progress
    # events (XHR upload progress) and ends full.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    upload(p, str(big))
    item = p.visible("#uploads li.upload")
    bar = item.find_element(By.TAG_NAME, "progress")
    assert bar.get_attribute("value") == "100" and bar.get_attribute("max") == "100"
    assert int(item.get_attribute("data-progress-events")) >= 1
    assert "uploaded" in item.text
    assert "6.0 MiB" in row(p, "big.bin").text
    p.shot("files-uploaded")
    # Drag and drop: a file dropped on the drop zone goes up the same way.
    p.d.execute_script("""
        const dt = new DataTransfer();
        dt.items.add(new File(["dropped content"], "dropped.txt", {type: "text/plain"}));
        document.getElementById("dropzone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));""")
    p.status_says("dropped.txt uploaded")
    row(p, "dropped.txt")
    h = token(server)
    got = requests.get(f"{server.url}/v1/AUTH_test/docs/dropped.txt", headers=h, timeout=T)
    assert got.content == b"dropped content"
    # A folder, a file in it, the path shown.
    p.el("#new-folder-name").send_keys("reports")
    p.el("#new-folder-form button").click()
    p.status_says("Folder reports created")
    p.wait(lambda d: any("reports/" in b.text for b in p.els("#listing-body button")),
           message="the folder is not listed")
    next(b for b in p.els("#listing-body button") if "reports/" in b.text).click()
    p.wait(lambda d: "reports" in p.text("crumbs"), message="the folder did not open")
    note = tmp_path / "note.txt"
    note.write_bytes(b"quarterly numbers")
    upload(p, str(note))
    row(p, "reports/note.txt")
    p.shot("files-folder")
    # Download: the browser saves what the server holds.
    row(p, "reports/note.txt").find_element(By.CSS_SELECTOR, "td:last-child button").click()
    p.status_says("reports/note.txt downloaded")
    saved = os.path.join(downloads, "note.txt")
    p.wait(lambda d: saved_bytes(saved) == b"quarterly numbers",
           message="the download did not arrive")
    # Move (server-side, X-Move-From): listed under its new name, the old one gone.
    details(p, "reports/note.txt")
    p.shot("files-details")
    p.el("#rename-to").clear()
    p.el("#rename-to").send_keys("reports/renamed.txt")
    p.el("#rename-form button").click()
    p.status_says("moved to reports/renamed.txt")
    row(p, "reports/renamed.txt")
    assert not p.els('#listing-body tr[data-name="reports/note.txt"]')
    assert requests.get(f"{server.url}/v1/AUTH_test/docs/reports/note.txt", headers=h,
                        timeout=T).status_code == 404
    # Delete, after the confirmation.
    p.click("#d-delete")
    p.wait(lambda d: d.switch_to.alert, message="no confirmation asked")
    p.d.switch_to.alert.accept()
    p.status_says("reports/renamed.txt deleted")
    p.wait(lambda d: not p.els('#listing-body tr[data-name="reports/renamed.txt"]'),
           message="the deleted file is still listed")
    assert requests.get(f"{server.url}/v1/AUTH_test/docs/reports/renamed.txt", headers=h,
                        timeout=T).status_code == 404


def test_share_with_another_user_who_then_sees_it(page: Page, server: PithosServer,
                                                  downloads: str, tmp_path) -> None:
    p = page
    p.sign_in("test:tester", "testing")
    new_container(p, "team")
    f = tmp_path / "plan.txt"
    f.write_bytes(b"the plan")
    upload(p, str(f))
    details(p, "plan.txt")
    p.el("#share-read").send_keys("test2")
    p.el("#share-form button").click()
    p.status_says("plan.txt shared (read=test2)")
    head = requests.head(f"{server.url}/v1/AUTH_test/team/plan.txt", headers=token(server),
                         timeout=T)
    assert head.headers["X-Object-Sharing"] == "read=test2"
    p.click("#signout")
    p.status_says("Signed out")
    # The other user: the sharing account is offered, its shared file listed and readable.
    p.sign_in("test2:tester2", "testing2")
    p.wait(lambda d: any(o.text == "Shared by test" for o in p.els("#account-select option")),
           message="the sharing account is not offered")
    p.d.execute_script("""const s = document.getElementById("account-select");
        s.value = "/v1/AUTH_test"; s.dispatchEvent(new Event("change"));""")
    p.click("#container-list button")
    row(p, "plan.txt")
    p.shot("files-shared-with-me")
    row(p, "plan.txt").find_element(By.CSS_SELECTOR, "td:last-child button").click()
    p.status_says("plan.txt downloaded")
    saved = os.path.join(downloads, "plan.txt")
    p.wait(lambda d: saved_bytes(saved) == b"the plan",
           message="the shared file did not download")
    # Only what is shared: the sharee sees no other file of the container.
    assert [r.get_attribute("data-name") for r in p.els("#listing-body tr[data-name]")] \
        == ["plan.txt"]


def test_public_link_fetched_without_signing_in(page: Page, server: PithosServer,
                                                tmp_path) -> None:
    p = page
    p.sign_in("test:tester", "testing")
    new_container(p, "pub")
    f = tmp_path / "poster.html"
    f.write_bytes(b"<script>alert(1)</script>public words")
    upload(p, str(f))
    details(p, "poster.html")
    p.el("#public-toggle").click()
    p.status_says("poster.html is public")
    link = p.visible("#public-link").text
    assert link.startswith(f"{server.url}/public/")
    p.shot("files-public-link")
    got = requests.get(link, timeout=T)  # no token, no cookie
    assert got.status_code == 200 and got.content.endswith(b"public words")
    # Opened in a browser, published content runs in no origin of ours.
    assert got.headers["Content-Security-Policy"] == "sandbox"
    p.el("#public-toggle").click()
    p.status_says("poster.html is no longer public")
    assert p.el("#public-link").is_displayed() is False
    assert requests.get(link, timeout=T).status_code == 404


def test_restore_an_old_version(page: Page, server: PithosServer, tmp_path) -> None:
    p = page
    p.sign_in("test:tester", "testing")
    new_container(p, "hist")
    f = tmp_path / "doc.txt"
    f.write_bytes(b"first words")
    upload(p, str(f))
    time.sleep(0.01)  # two versions at distinct timestamps (not a timing assert)
    f.write_bytes(b"second, longer words")
    upload(p, str(f))
    details(p, "doc.txt")
    p.wait(lambda d: len(p.els("#versions li")) == 2, message="two versions not listed")
    p.shot("files-versions")
    p.el("#versions button").click()  # the only Restore: the older version
    p.status_says("doc.txt restored to its version of")
    obj = f"{server.url}/v1/AUTH_test/hist/doc.txt"
    assert requests.get(obj, headers=token(server), timeout=T).content == b"first words"
    p.wait(lambda d: len(p.els("#versions li")) == 3, message="the restore is no new version")


def test_hitting_the_quota_shows_the_message(page: Page, server: PithosServer,
                                             tmp_path) -> None:
    p = page
    h = token(server)
    assert requests.put(f"{server.url}/v1/AUTH_test/small", timeout=T, headers={
        **h, "X-Container-Policy-Quota": "1000"}).status_code in (201, 202)
    p.sign_in("test:tester", "testing")
    p.wait(lambda d: any(b.text == "small" for b in p.els("#container-list button")),
           message="the container is not listed")
    next(b for b in p.els("#container-list button") if b.text == "small").click()
    p.wait(lambda d: "of 1000 B" in p.text("container-usage"),
           message="the container's quota is not shown")
    f = tmp_path / "large.bin"
    f.write_bytes(b"x" * (8 << 20))  # far more than a socket buffer: refused before sent
    p.el("#upload-input").send_keys(str(f))
    message = p.error_says("Over quota")
    assert "quota" in message.lower() and "Traceback" not in message
    failed = p.visible("#uploads li.upload")
    assert "failed: Over quota" in failed.text and "failed" in failed.get_attribute("class")
    assert failed.find_element(By.TAG_NAME, "progress").get_attribute("value") == "0"
    # The projects' quotas (Astakos' view): the home project's usage is shown.
    home = p.visible('#project-quota-list li[data-project="test"]').text
    assert home.startswith("test (home): ") and "bytes" in home, home
    p.shot("files-quota")
    assert requests.get(f"{server.url}/v1/AUTH_test/small/large.bin", headers=h,
                        timeout=T).status_code == 404


def test_phone_width_keyboard_and_an_ended_session(page: Page, server: PithosServer) -> None:
    p = page
    assert requests.put(f"{server.url}/v1/AUTH_test/phone", headers=token(server),
                        timeout=T).status_code in (201, 202)
    p.d.set_window_size(390, 844)
    try:
        p.open()
        # The keyboard alone: the user field, Tab to the key, Enter signs in.
        p.el("#signin-user").click()
        active = p.d.switch_to.active_element
        active.send_keys("test:tester")
        active.send_keys(Keys.TAB)
        assert p.d.switch_to.active_element.get_attribute("id") == "signin-key"
        p.d.switch_to.active_element.send_keys("testing", Keys.ENTER)
        p.status_says("Signed in as test:tester")
        p.visible("#container-list button")
        # Nothing wider than the phone's screen.
        assert p.d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1")
        p.shot("files-phone")
        # The session ends on the server (signed out elsewhere): the next action says so in
        # words and the sign-in page comes back.
        csrf = p.d.get_cookie("pithos_csrf")["value"]
        session = p.d.get_cookie("pithos_session")["value"]
        r = requests.delete(f"{server.url}/ui/api/session", timeout=T, headers={
            "X-CSRF-Token": csrf}, cookies={"pithos_session": session})
        assert r.status_code == 204
        p.click("#container-list button")
        p.visible("#signin-user")
        assert p.error_says("session has ended") == "Your session has ended: sign in again"
        p.shot("signin-after-session-ended")
    finally:
        p.d.set_window_size(1280, 900)
