// The file manager: containers, folders (pseudo-directories by "/"), uploads with progress
// and drag-and-drop, and per file: download, move, delete, sharing, public link, versions.
import { api, act, upload, path, size, el, say, fail } from "./api.js";

const $ = (id) => document.getElementById(id);

function quotaText(what, used, quota) {
  const q = Number(quota || 0);
  return q > 0 ? `${what}: ${size(used)} used of ${size(q)} (${Math.min(100, Math.round(100 * used / q))}%)`
               : `${what}: ${size(used)} used, no quota`;
}

export class Files {
  constructor(who) {
    this.who = who;
    this.account = who.storage;          // "/v1/AUTH_name": ours, or one sharing with us
    this.container = null;
    this.prefix = "";
    this.selected = null;
    if (!Files.wired) { Files.wire(); Files.wired = true; }
    Files.current = this;
  }

  get own() { return this.account === this.who.storage; }

  static wire() {
    const f = () => Files.current;
    $("account-select").addEventListener("change", (ev) => {
      f().account = ev.target.value; f().container = null; f().prefix = ""; f().refresh();
    });
    $("new-container-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = $("new-container-name").value.trim();
      act(`Container ${name} created`, async () => {
        await api("PUT", path(f().account, name));
        $("new-container-name").value = "";
        f().container = name; f().prefix = "";
        await f().refresh();
      });
    });
    $("new-folder-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = $("new-folder-name").value.trim().replace(/\/+$/, "");
      act(`Folder ${name} created`, async () => {
        await api("PUT", path(f().account, f().container, `${f().prefix}${name}/`),
                  { headers: { "Content-Type": "application/directory" }, body: "" });
        $("new-folder-name").value = "";
        await f().list();
      });
    });
    const zone = $("dropzone");
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault(); zone.classList.remove("over");
      f().uploadAll(ev.dataTransfer.files);
    });
    $("upload-input").addEventListener("change", (ev) => {
      f().uploadAll(ev.target.files);
      ev.target.value = "";
    });
    $("d-close").addEventListener("click", () => f().closeDetails());
    $("d-download").addEventListener("click", () => f().download(f().selected));
    $("d-delete").addEventListener("click", () => f().remove(f().selected));
    $("rename-form").addEventListener("submit", (ev) => { ev.preventDefault(); f().move(); });
    $("share-form").addEventListener("submit", (ev) => { ev.preventDefault(); f().share(); });
    $("public-toggle").addEventListener("change", (ev) => f().publish(ev.target.checked));
  }

  async refresh() {
    await act(null, async () => {
      await this.accounts();
      await this.containers();
      await this.list();
    });
  }

  async accounts() {
    const sel = $("account-select");
    const r = await api("GET", "/ui/api/shared");
    this.shared = new Map((await r.json()).accounts.map((a) => [`/v1/${a.name}`, a.containers]));
    sel.replaceChildren(el("option", { value: this.who.storage, text: "My files" }),
      ...[...this.shared.keys()].map((a) => el("option", {
        value: a, text: `Shared by ${a.slice(4).replace(/^AUTH_/, "")}` })));
    if (!this.own && !this.shared.has(this.account)) {
      this.account = this.who.storage; this.container = null; this.prefix = "";
    }
    sel.value = this.account;
  }

  async containers() {
    const list = $("container-list");
    // Another account's: only the containers holding what it shares with us.
    const rows = this.own ? await (await api("GET", `${this.account}?format=json`)).json()
                          : this.shared.get(this.account).map((name) => ({ name }));
    list.replaceChildren(...rows.map((c) => el("li", {}, el("button", {
      type: "button", class: "link", "aria-current": c.name === this.container ? "true" : null,
      text: c.name, onclick: () => act(null, () => { this.container = c.name; this.prefix = ""; this.closeDetails(); return this.list(); }),
    }))));
    if (!rows.length) list.append(el("li", { text: "No containers yet." }));
    $("new-container-form").hidden = !this.own;
    if (this.own) {
      const h = await api("HEAD", this.account);
      $("account-usage").textContent = quotaText("Account", h.headers.get("X-Account-Bytes-Used"),
                                                 h.headers.get("X-Account-Policy-Quota"));
      await this.projectQuotas();
    } else {
      $("account-usage").textContent = "";
      $("project-quotas").hidden = true;
    }
    if (this.container === null && rows.length) this.container = rows[0].name;
  }

  // Every project the user acts in, each resource's usage against its limit (Astakos'
  // quota view); the home project is named by the account.
  async projectQuotas() {
    const r = await api("GET", "/account/v1.0/quotas");
    const projects = Object.entries(await r.json());
    const items = [];
    for (const [project, resources] of projects) {
      const label = project === this.who.account ? `${project} (home)` : project;
      const parts = Object.entries(resources).map(([name, h]) => {
        const show = (v) => (name === "bytes" ? size(v) : String(v));
        return h.limit === null || h.limit === undefined ? `${name} ${show(h.usage)}`
                                                         : `${name} ${show(h.usage)} of ${show(h.limit)}`;
      });
      items.push(el("li", { "data-project": project, text: `${label}: ${parts.join(", ")}` }));
    }
    $("project-quota-list").replaceChildren(...items);
    $("project-quotas").hidden = items.length === 0;
  }

  async list() {
    const body = $("listing-body");
    this.crumbs();
    $("dropzone").hidden = $("new-folder-form").hidden = !this.container;
    if (!this.container) { body.replaceChildren(); $("listing-empty").hidden = false; return; }
    const q = new URLSearchParams({ format: "json", delimiter: "/", prefix: this.prefix });
    const r = await api("GET", `${path(this.account, this.container)}?${q}`);
    const rows = await r.json();
    const dirs = new Set(rows.filter((e) => e.subdir).map((e) => e.subdir));
    const out = [];
    for (const e of rows) {
      if (e.subdir) {
        const label = e.subdir.slice(this.prefix.length);
        out.push(el("tr", {}, el("td", {}, el("button", {
          type: "button", class: "link", text: `📁 ${label}`,
          onclick: () => act(null, () => { this.prefix = e.subdir; this.closeDetails(); return this.list(); }),
        })), el("td"), el("td"), el("td")));
      } else if (!dirs.has(e.name) && e.name !== this.prefix) {
        const label = e.name.slice(this.prefix.length);
        out.push(el("tr", { "data-name": e.name },
          el("td", {}, el("button", { type: "button", class: "link", text: label,
                                      onclick: () => this.details(e.name) })),
          el("td", { text: size(e.bytes) }),
          el("td", { text: (e.last_modified || "").replace("T", " ").slice(0, 19) }),
          el("td", {}, el("button", { type: "button", class: "secondary", text: "Download",
                                      "aria-label": `Download ${label}`,
                                      onclick: () => this.download(e.name) }))));
      }
    }
    body.replaceChildren(...out);
    $("listing-empty").hidden = out.length > 0;
    if (this.own || this.container) {
      const h = await api("HEAD", path(this.account, this.container));
      $("container-usage").textContent = this.own
        ? quotaText(`Container ${this.container}`, h.headers.get("X-Container-Bytes-Used"),
                    h.headers.get("X-Container-Policy-Quota"))
        : `Shared by ${this.account.slice(4).replace(/^AUTH_/, "")}`;
    }
  }

  crumbs() {
    const nav = $("crumbs");
    nav.replaceChildren();
    if (!this.container) { nav.textContent = "Choose or create a container."; return; }
    nav.append(el("button", { type: "button", class: "link", text: this.container,
                              onclick: () => act(null, () => { this.prefix = ""; return this.list(); }) }));
    let at = "";
    for (const part of this.prefix.split("/").filter(Boolean)) {
      at += `${part}/`;
      const here = at;
      nav.append(" / ", el("button", { type: "button", class: "link", text: part,
                                       onclick: () => act(null, () => { this.prefix = here; return this.list(); }) }));
    }
  }

  uploadAll(fileList) {
    for (const file of Array.from(fileList)) this.uploadOne(file);
  }

  async uploadOne(file) {
    const name = `${this.prefix}${file.name}`;
    const bar = el("progress", { max: "100", value: "0", "aria-label": `Uploading ${file.name}` });
    const note = el("span", { text: " 0%" });
    const item = el("li", { class: "upload" }, `${file.name} `, bar, note);
    $("uploads").append(item);
    try {
      await upload(path(this.account, this.container, name), file, (loaded, total) => {
        item.dataset.progressEvents = Number(item.dataset.progressEvents || 0) + 1;
        const pct = total ? Math.round((100 * loaded) / total) : 100;
        bar.value = pct;
        note.textContent = ` ${pct}%`;
      });
      bar.value = 100;
      note.textContent = " uploaded";
      say(`${file.name} uploaded`);
      await this.list();
      await this.containers();
    } catch (e) {
      // What was sent is not what was stored: the bar says so, not "100%".
      item.classList.add("failed");
      bar.value = 0;
      note.textContent = ` failed: ${e.message}`;
      fail(e);
    }
  }

  async download(name) {
    await act(`${name} downloaded`, async () => {
      const r = await api("GET", path(this.account, this.container, name));
      const url = URL.createObjectURL(await r.blob());
      const a = el("a", { href: url, download: name.split("/").pop() });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    });
  }

  async remove(name) {
    if (!name || !confirm(`Delete ${name}?`)) return;
    await act(`${name} deleted`, async () => {
      await api("DELETE", path(this.account, this.container, name));
      this.closeDetails();
      await this.list();
    });
  }

  closeDetails() {
    this.selected = null;
    $("details").hidden = true;
  }

  async details(name) {
    this.selected = name;
    await act(null, async () => {
      const obj = path(this.account, this.container, name);
      const h = await api("HEAD", obj);
      $("details").hidden = false;
      $("details-name").textContent = name;
      $("rename-to").value = name;
      for (const e of document.querySelectorAll("#details .owner-only")) e.hidden = !this.own;
      if (this.own) {
        const sharing = h.headers.get("X-Object-Sharing") || "";
        const part = (kind) => (sharing.split(";").find((p) => p.startsWith(`${kind}=`)) || "")
          .slice(kind.length + 1);
        $("share-read").value = part("read");
        $("share-write").value = part("write");
        this.showLink(h.headers.get("X-Object-Public"));
        await this.versions(name);
      }
      $("details-title").focus();
    });
  }

  showLink(link) {
    $("public-toggle").checked = !!link;
    const a = $("public-link");
    a.hidden = !link;
    a.textContent = link || "";
    a.href = link || "#";
  }

  async versions(name) {
    const obj = path(this.account, this.container, name);
    const r = await api("GET", `${obj}?version=list&format=json`);
    const list = (await r.json()).versions || [];
    const current = list.length ? list[list.length - 1][0] : null;
    $("versions").replaceChildren(...list.slice().reverse().map(([vid, ts]) => {
      const when = new Date(Number(ts) * 1000).toISOString().replace("T", " ").slice(0, 19);
      return el("li", {}, `${when} `, vid === current ? el("em", { text: "(current)" })
        : el("button", { type: "button", class: "secondary", text: "Restore",
                         "aria-label": `Restore the version of ${when}`,
                         onclick: () => this.restore(name, vid, when) }));
    }));
  }

  async restore(name, vid, when) {
    await act(`${name} restored to its version of ${when}`, async () => {
      await api("PUT", path(this.account, this.container, name), {
        headers: { "X-Copy-From": path("", this.container, name), "X-Source-Version": vid },
        body: "" });
      await this.versions(name);
      await this.list();
    });
  }

  async move() {
    const from = this.selected;
    const to = $("rename-to").value.trim();
    if (!from || !to || to === from) return;
    await act(`${from} moved to ${to}`, async () => {
      await api("PUT", path(this.account, this.container, to), {
        headers: { "X-Move-From": path("", this.container, from) }, body: "" });
      await this.list();
      await this.details(to);
    });
  }

  async share() {
    const name = this.selected;
    const read = $("share-read").value.replace(/\s+/g, "");
    const write = $("share-write").value.replace(/\s+/g, "");
    const value = [read && `read=${read}`, write && `write=${write}`].filter(Boolean).join(";");
    await act(value ? `${name} shared (${value})` : `${name} no longer shared`, async () => {
      await api("POST", path(this.account, this.container, name),
                { headers: { "X-Object-Sharing": value } });
    });
  }

  async publish(on) {
    const name = this.selected;
    await act(on ? `${name} is public` : `${name} is no longer public`, async () => {
      const obj = path(this.account, this.container, name);
      try {
        await api("POST", obj, { headers: { "X-Object-Public": on ? "true" : "false" } });
      } finally {
        const h = await api("HEAD", obj);
        this.showLink(h.headers.get("X-Object-Public"));
      }
    });
  }
}
