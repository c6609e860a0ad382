// Nereid's web console: the little the pages need JavaScript for. Everything here is an
// enhancement; pages work without it (except the consoles and uploads, which say so).
"use strict";

// Buttons that ask first: <form data-confirm="…">.
document.addEventListener("submit", (ev) => {
  const msg = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) ev.preventDefault();
});

// Live regions: <div data-live="URL"> reloads its content from URL (an HTML fragment)
// every 2 s while the page is visible, so jobs and states move without reloading.
function refreshLive() {
  if (document.hidden) return;
  document.querySelectorAll("[data-live]").forEach((el) => {
    const url = el.getAttribute("data-live");
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then((r) => (r.ok ? r.text() : null))
      .then((html) => {
        if (html !== null && html !== el.innerHTML) el.innerHTML = html;
      })
      .catch(() => {});
  });
}
setInterval(refreshLive, 2000);

// Uploads with a progress bar: <form data-upload="URL"> with a file input named "file";
// the other fields go in the query string, the file is the body, the CSRF token a header.
document.addEventListener("submit", (ev) => {
  const form = ev.target;
  const url = form.getAttribute && form.getAttribute("data-upload");
  if (!url) return;
  ev.preventDefault();
  const file = form.querySelector("input[type=file]").files[0];
  const status = form.querySelector("[data-upload-status]");
  const bar = form.querySelector("progress");
  if (!file) { status.textContent = "file: choose a disk image to upload."; return; }
  const q = new URLSearchParams();
  new FormData(form).forEach((v, k) => { if (typeof v === "string" && k !== "csrf") q.append(k, v); });
  q.append("filename", file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", url + "?" + q.toString());
  xhr.setRequestHeader("X-CSRF-Token", document.querySelector("meta[name=csrf-token]").content);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      bar.max = e.total; bar.value = e.loaded;
      status.textContent = "Uploading: " + Math.floor((100 * e.loaded) / e.total) + " %";
    }
  };
  xhr.upload.onload = () => { status.textContent = "Uploaded; checking the disk and activating the image…"; };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = { message: xhr.responseText }; }
    if (xhr.status >= 200 && xhr.status < 300 && body.location) {
      window.location.assign(body.location);
    } else {
      const fields = (body.errors || []).map((f) => f.field + ": " + f.message).join("; ");
      status.textContent = "Upload failed: " + (body.message || xhr.status) + (fields ? " (" + fields + ")" : "");
      status.setAttribute("role", "alert");
    }
  };
  xhr.onerror = () => { status.textContent = "Upload failed: the connection was lost."; };
  xhr.send(file);
});
