// The machines page: create one from an image and a flavor (three clicks), the state of
// every machine polled while the page shows, console log, start/stop/reboot/delete.
import { api, act, el, say } from "./api.js";

const $ = (id) => document.getElementById(id);
const NOVA = "/compute/v2.1";
const POLL_MS = 2000;

export class Machines {
  constructor(who) {
    this.who = who;
    this.timer = null;
    this.flavors = new Map();
    if (!Machines.wired) {
      $("create-form").addEventListener("submit", (ev) => { ev.preventDefault(); Machines.current.create(); });
      $("console-close").addEventListener("click", () => { $("console").hidden = true; });
      Machines.wired = true;
    }
    Machines.current = this;
  }

  active(on) {
    clearInterval(this.timer);
    this.timer = null;
    if (!on) return;
    act(null, async () => { await this.choices(); await this.poll(); });
    this.timer = setInterval(() => this.poll().catch(() => {}), POLL_MS);
  }

  async choices() {
    const imgs = (await (await api("GET", "/image/v2/images")).json()).images || [];
    const usable = imgs.filter((i) => i.status === "active" && !["aki", "ari"].includes(i.disk_format));
    $("image-choices").replaceChildren(...usable.map((i) => el("label", {},
      el("input", { type: "radio", name: "image", value: i.id, required: true }),
      `${i.name} (${i.disk_format})`)));
    if (!usable.length) $("image-choices").textContent = "No images yet: upload one with the image API.";
    const flavors = (await (await api("GET", `${NOVA}/flavors/detail`)).json()).flavors || [];
    this.flavors = new Map(flavors.map((f) => [String(f.id), f]));
    $("flavor-choices").replaceChildren(...flavors.map((f) => el("label", {},
      el("input", { type: "radio", name: "flavor", value: f.id, required: true }),
      `${f.name}: ${f.vcpus} vCPU, ${f.ram} MiB RAM, ${f.disk} GiB disk`)));
    if (!$("machine-name").value) $("machine-name").value = `machine-${Math.random().toString(36).slice(2, 7)}`;
  }

  async create() {
    const image = document.querySelector("input[name=image]:checked");
    const flavor = document.querySelector("input[name=flavor]:checked");
    const name = $("machine-name").value.trim();
    if (!image || !flavor) { say("Choose an image and a flavor first"); return; }
    await act(`Machine ${name} is being created`, async () => {
      await api("POST", `${NOVA}/servers`, { json: { server: {
        name, imageRef: image.value, flavorRef: flavor.value } } });
      $("machine-name").value = `machine-${Math.random().toString(36).slice(2, 7)}`;
      await this.poll();
    });
  }

  async poll() {
    const servers = (await (await api("GET", `${NOVA}/servers/detail`)).json()).servers || [];
    // Rows are updated in place, not rebuilt: a button keeps the keyboard's focus while the
    // states change around it.
    const body = $("machines-body");
    const old = new Map([...body.children].map((tr) => [tr.dataset.id, tr]));
    let at = null;
    for (const s of servers) {
      let tr = old.get(s.id);
      old.delete(s.id);
      if (!tr) tr = this.row(s);
      tr.querySelector(".state").textContent = this.state(s);
      if (at ? at.nextSibling !== tr : body.firstChild !== tr) {
        body.insertBefore(tr, at ? at.nextSibling : body.firstChild);
      }
      at = tr;
    }
    for (const tr of old.values()) tr.remove();
    $("machines-empty").hidden = servers.length > 0;
  }

  state(s) {
    return s.status + (s["OS-EXT-STS:task_state"] ? ` (${s["OS-EXT-STS:task_state"]})` : "");
  }

  row(s) {
    const f = this.flavors.get(String((s.flavor || {}).id)) || {};
    const b = (text, fn, cls = "secondary") => el("button", {
      type: "button", class: cls, text, "aria-label": `${text} ${s.name}`, onclick: fn });
    return el("tr", { "data-id": s.id },
      el("td", { text: s.name }),
      el("td", { class: "state", text: this.state(s) }),
      el("td", { text: f.name || (s.flavor || {}).id || "" }),
      el("td", {},
        b("Start", () => this.action(s, { "os-start": null }, "starting")),
        b("Stop", () => this.action(s, { "os-stop": null }, "stopping")),
        b("Reboot", () => this.action(s, { reboot: { type: "SOFT" } }, "rebooting")),
        b("Console", () => this.console(s)),
        b("Delete", () => this.remove(s), "danger")));
  }

  async action(s, body, doing) {
    await act(`${s.name} is ${doing}`, async () => {
      await api("POST", `${NOVA}/servers/${s.id}/action`, { json: body });
      await this.poll();
    });
  }

  async console(s) {
    await act(`Console log of ${s.name}`, async () => {
      const r = await api("POST", `${NOVA}/servers/${s.id}/action`,
                          { json: { "os-getConsoleOutput": { length: 200 } } });
      $("console-title").textContent = `Console log of ${s.name}`;
      $("console-text").textContent = (await r.json()).output || "(empty)";
      $("console").hidden = false;
      $("console-text").focus();
    });
  }

  async remove(s) {
    if (!confirm(`Delete machine ${s.name}?`)) return;
    await act(`${s.name} is being deleted`, async () => {
      await api("DELETE", `${NOVA}/servers/${s.id}`);
      await this.poll();
    });
  }
}
