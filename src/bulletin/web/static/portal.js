// The portal works without this file; with it: live progress bars, the audience count and
// channel previews as you type, and an upload progress bar for imports. No framework.
"use strict";

function csrfToken(form) {
  const field = form.querySelector('input[name="csrf_token"]');
  return field ? field.value : "";
}

function renderProgress(row, item) {
  const bar = row.querySelector("progress");
  if (bar) { bar.value = item.percent; bar.textContent = item.percent + " %"; }
  const percent = row.querySelector(".percent");
  if (percent) percent.textContent = item.percent + " %";
  const counts = row.querySelector(".counts");
  if (counts) {
    const parts = Object.entries(item.counts).map(([state, n]) => state + " " + n);
    counts.textContent = parts.length ? parts.join(" · ") : "no deliveries yet";
  }
  const state = row.querySelector(".state") || document.querySelector("dd.state");
  if (state) state.textContent = item.state;
  row.dataset.active = item.active ? "true" : "false";
}

function pollProgress() {
  const table = document.querySelector("[data-progress-url]");
  if (!table) return;
  const tick = async () => {
    const rows = [...table.querySelectorAll('tr[data-active="true"]')];
    if (!rows.length) return;
    const query = rows.map((row) => "id=" + encodeURIComponent(row.dataset.announcement)).join("&");
    try {
      const answer = await fetch(table.dataset.progressUrl + "?" + query, { credentials: "same-origin" });
      if (answer.ok) {
        const body = await answer.json();
        for (const item of body.items) {
          const row = table.querySelector('tr[data-announcement="' + item.id + '"]');
          if (row) renderProgress(row, item);
        }
      }
    } catch (error) { /* the next tick tries again */ }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function compose() {
  const form = document.getElementById("compose");
  if (!form) return;
  const zone = form.querySelector("#timezone");
  if (zone && !zone.dataset.default) {
    const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if ([...zone.options].some((o) => o.value === browserZone)) zone.value = browserZone;
  }
  const countLine = document.getElementById("audience-count");
  const count = async () => {
    const data = new FormData(form);
    const params = new URLSearchParams({
      audience: data.get("audience") || "all",
      groups: data.get("groups") || "",
      recipients: data.get("recipients") || "",
    });
    const answer = await fetch(form.dataset.audienceUrl + "?" + params, { credentials: "same-origin" });
    if (!answer.ok) return;
    const body = await answer.json();
    let text = body.error || ("Reaches " + body.count + (body.count === 1 ? " person." : " people."));
    if (body.unknown && body.unknown.length) text += " Unknown: " + body.unknown.join(", ") + ".";
    countLine.textContent = text;
  };
  const preview = async () => {
    const data = new FormData(form);
    const answer = await fetch(form.dataset.previewUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken(form) },
      body: new URLSearchParams({ title: data.get("title") || "", body: data.get("body") || "", sms_body: data.get("sms_body") || "" }),
    });
    if (!answer.ok) return;
    const body = await answer.json();
    if (body.error) { document.getElementById("sms-length").textContent = body.error; return; }
    const s = body.sms;
    document.getElementById("sms-length").textContent =
      s.characters + " characters, " + s.encoding + ", " + s.segments + (s.segments === 1 ? " segment" : " segments");
    document.getElementById("sms-text").textContent = s.text;
    document.getElementById("whatsapp-text").textContent = body.whatsapp;
    document.getElementById("email-html").srcdoc = body.email_html;
  };
  const later = debounce(count, 300);
  form.querySelectorAll('[name="audience"], #groups, #recipients').forEach((el) => el.addEventListener("input", later));
  const previewLater = debounce(preview, 300);
  form.querySelectorAll("#title, #body, #sms_body").forEach((el) => el.addEventListener("input", previewLater));
  count();
  if (form.querySelector("#title").value || form.querySelector("#body").value) preview();
}

function importProgress() {
  const form = document.getElementById("import-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const bar = document.getElementById("import-progress");
    const status = document.getElementById("import-status");
    bar.hidden = false;
    status.textContent = "Uploading…";
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 100);
    });
    request.upload.addEventListener("load", () => { bar.removeAttribute("value"); status.textContent = "Checking and importing…"; });
    request.addEventListener("load", () => {
      document.open();
      document.write(request.responseText);
      document.close();
    });
    request.addEventListener("error", () => { status.textContent = "The upload failed; try again."; });
    request.send(new FormData(form));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  pollProgress();
  compose();
  importProgress();
});
