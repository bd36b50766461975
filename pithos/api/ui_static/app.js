// The page's frame: signing in and out, and the switch between the files and machines pages.
import { api, act, fail, say, ApiError } from "./api.js";
import { Files } from "./files.js";
import { Machines } from "./machines.js";

const $ = (id) => document.getElementById(id);
let me = null;
let files = null;
let machines = null;

function show(page) {
  for (const p of ["signin", "files", "machines"]) $(`page-${p}`).hidden = p !== page;
  for (const b of document.querySelectorAll("#nav button")) {
    if (b.dataset.page === page) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (machines) machines.active(page === "machines");
  if (page === "files" && files) files.refresh();
  $("main").focus();
}

function signedIn(who) {
  me = who;
  $("whoami").textContent = `${who.account}:${who.user}`;
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("nav-machines").hidden = !who.compute;
  files = new Files(who);
  machines = who.compute ? new Machines(who) : null;
  show(location.hash === "#machines" && who.compute ? "machines" : "files");
}

function signedOut(message) {
  me = null;
  if (machines) machines.active(false);
  files = machines = null;
  $("whoami").textContent = "";
  $("nav").hidden = true;
  $("signout").hidden = true;
  show("signin");
  say(message || "");
  $("signin-user").focus();
}

document.addEventListener("signed-out", () => { if (me) signedOut(); });

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const button = $("signin-submit");
  button.disabled = true;
  try {
    const r = await api("POST", "/ui/api/session",
                        { json: { user: $("signin-user").value.trim(), key: $("signin-key").value } });
    $("signin-key").value = "";
    const who = await r.json();
    say(`Signed in as ${who.account}:${who.user}`);
    signedIn(who);
  } catch (e) {
    fail(e instanceof ApiError && e.status === 401 ? new ApiError(401, "Wrong user or key") : e);
  } finally {
    button.disabled = false;
  }
});

$("signout").addEventListener("click", () => act(null, async () => {
  await api("DELETE", "/ui/api/session");
  signedOut("Signed out");
}));

for (const b of document.querySelectorAll("#nav button")) {
  b.addEventListener("click", () => {
    history.replaceState(null, "", `#${b.dataset.page}`);
    show(b.dataset.page);
  });
}

// A page opened while signed in: the session cookie says who.
(async () => {
  try {
    const r = await api("GET", "/ui/api/session");
    signedIn(await r.json());
  } catch (e) {
    signedOut(null);
  }
})();
