// The queue is polled (a light GET /v1/videos) so the page needs no SSE parsing and works
// with an API key, which EventSource cannot send.
"use strict";

const $ = (sel) => document.querySelector(sel);
const keyInput = $("#key");
keyInput.value = localStorage.getItem("phyai-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("phyai-api-key", keyInput.value));

function headers() {
  const k = keyInput.value.trim();
  return k ? { Authorization: "Bearer " + k } : {};
}

async function api(path, init = {}) {
  const res = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error.message; } catch (_) {}
    throw new Error(msg);
  }
  return res;
}

$("#form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  for (const [k, v] of [...form.entries()]) {
    if (v === "" || (v instanceof File && v.size === 0)) form.delete(k);
  }
  // A control clip makes the request a transfer: the field is named after its hint.
  const control = $("#control").files[0];
  if (control) form.append("control_" + $("#hint").value, control);
  try {
    const video = await (await api("/v1/videos", { method: "POST", body: form })).json();
    $("#message").textContent = "Queued " + video.id;
    refresh();
  } catch (e) {
    $("#message").textContent = "Error: " + e.message;
  }
});

let shown = null;

async function play(video) {
  const player = $("#player");
  const src = "/v1/videos/" + video.id + "/content";
  const el = document.createElement("video");
  el.controls = true;
  el.loop = true;
  el.id = "player-video";
  el.dataset.videoId = video.id;
  if (keyInput.value.trim()) {
    const blob = await (await api(src)).blob();
    el.src = URL.createObjectURL(blob);
  } else {
    el.src = src;
  }
  const caption = document.createElement("p");
  caption.innerHTML = '<span class="id"></span> <span class="prompt"></span>';
  caption.querySelector(".id").textContent = video.id;
  caption.querySelector(".prompt").textContent = video.prompt;
  player.replaceChildren(el, caption);
  shown = video.id;
}

function row(video) {
  const li = document.createElement("li");
  li.id = "job-" + video.id;
  const text = document.createElement("div");
  const prompt = document.createElement("div");
  prompt.className = "prompt";
  prompt.textContent = video.prompt;
  const meta = document.createElement("div");
  meta.className = "id";
  meta.textContent = video.id + " · " + video.size + " · " + video.seconds + " s";
  text.append(prompt, meta);
  const state = document.createElement("div");
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = video.progress;
  const label = document.createElement("div");
  label.className = "status-" + video.status;
  label.textContent = video.status + (video.status === "in_progress" ? " " + video.progress + "%" : "");
  if (video.error) label.title = video.error.message;
  state.append(bar, label);
  const actions = document.createElement("div");
  if (video.status === "completed") {
    const b = document.createElement("button");
    b.className = "small";
    b.textContent = "Play";
    b.onclick = () => play(video);
    actions.append(b);
  }
  const del = document.createElement("button");
  del.className = "small";
  del.textContent = video.status === "completed" || video.status === "failed" ? "Delete" : "Cancel";
  del.onclick = async () => { await api("/v1/videos/" + video.id, { method: "DELETE" }); refresh(); };
  actions.append(del);
  li.append(text, state, actions);
  return li;
}

async function refresh() {
  try {
    const list = await (await api("/v1/videos?limit=50")).json();
    $("#jobs").replaceChildren(...list.data.map(row));
    const done = list.data.find((v) => v.status === "completed");
    if (done && shown === null) await play(done);
  } catch (e) {
    $("#message").textContent = "Error: " + e.message;
  }
}

fetch("/health").then((r) => r.json()).then((h) => { $("#model").textContent = h.model; }).catch(() => {});
refresh();
setInterval(refresh, 1000);
