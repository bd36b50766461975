// The browser's door to the API: every call carries the session cookie (the browser sends
// it) and the session's CSRF token in X-CSRF-Token; errors become ApiError with a reason in
// words (never a server trace).

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [k, v] = part.trim().split("=");
    if (k === "pithos_csrf") return decodeURIComponent(v || "");
  }
  return "";
}

const WORDS = {
  400: "The request was refused as malformed",
  401: "Your session has ended: sign in again",
  403: "You are not allowed to do that",
  404: "It is not there (any more?)",
  405: "That cannot be done here",
  409: "It conflicts with something that exists (not empty, or changed meanwhile)",
  411: "The upload had no length",
  412: "It changed meanwhile: reload and try again",
  413: "Over quota: there is no room left for this",
  415: "The server does not take that kind of content",
  422: "The upload arrived damaged: try again",
  429: "Too many requests: wait a moment",
  507: "The server is out of disk space",
};

// The reason a refusal gives, if it is a short plain sentence; else our words for its status.
export function reasonOf(status, text, contentType) {
  let said = "";
  if ((contentType || "").includes("json")) {
    try {
      const doc = JSON.parse(text);
      const inner = doc && typeof doc === "object" ? Object.values(doc)[0] : null;
      said = (inner && typeof inner === "object" && inner.message) || doc.message || "";
    } catch (e) { said = ""; }
  } else if (!(contentType || "").includes("html")) {
    said = text;
  }
  said = String(said || "").trim();
  const words = WORDS[status] || (status >= 500 ? "The server failed; try again later"
                                                : `Refused (${status})`);
  if (!said || said.length > 200 || said.includes("\n") || said.includes("<")) return words;
  if (status === 413) return `${words} (${said})`;
  return said.charAt(0).toUpperCase() + said.slice(1);
}

export async function api(method, path, { headers = {}, body, json } = {}) {
  const h = { "X-CSRF-Token": csrfToken(), ...headers };
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let r;
  try {
    r = await fetch(path, { method, headers: h, body, credentials: "same-origin",
                            cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "The server cannot be reached");
  }
  if (!r.ok) {
    const text = await r.text().catch(() => "");
    const err = new ApiError(r.status, reasonOf(r.status, text, r.headers.get("Content-Type")));
    if (r.status === 401) document.dispatchEvent(new CustomEvent("signed-out"));
    throw err;
  }
  return r;
}

// An upload with progress (fetch has no upload progress): onProgress(loaded, total).
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", path);
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) { resolve(xhr); return; }
      if (xhr.status === 401) document.dispatchEvent(new CustomEvent("signed-out"));
      reject(new ApiError(xhr.status, reasonOf(xhr.status, xhr.responseText,
                                                xhr.getResponseHeader("Content-Type"))));
    };
    xhr.onerror = () => reject(new ApiError(0, "The upload was cut off"));
    xhr.send(file);
  });
}

export function path(...parts) {
  return parts.map((p, i) => (i === 0 ? p : encodeURIComponent(p).replace(/%2F/g, "/")))
    .join("/");
}

export function size(n) {
  if (n === null || n === undefined || isNaN(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c);
  return e;
}

export function say(message) {
  const s = document.getElementById("status");
  s.textContent = message;
  document.getElementById("error").hidden = true;
}

export function fail(err) {
  const box = document.getElementById("error");
  box.textContent = err instanceof ApiError ? err.message : "Something went wrong in the page";
  box.hidden = false;
  document.getElementById("status").textContent = "";
}

// Run an action, saying what it did or why it failed.
export async function act(done, fn) {
  try {
    const out = await fn();
    if (done) say(done);
    return out;
  } catch (e) {
    fail(e);
    return undefined;
  }
}
