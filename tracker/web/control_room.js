// The control room: every open session, re-sent by the tracker once a second (Server-Sent Events).
"use strict";

const body = document.querySelector("#sessions tbody");
const status = document.getElementById("status");

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "-" : value.toFixed(digits);
}

function render(sessions) {
  document.getElementById("empty").hidden = sessions.length > 0;
  const thumbs = new Map([...body.querySelectorAll("img.thumb")].map((img) => [img.dataset.sessionId, img]));
  body.replaceChildren();
  for (const s of sessions) {
    const row = body.insertRow();
    row.dataset.sessionId = s.session_id;
    let img = thumbs.get(s.session_id);
    if (!img) {
      img = document.createElement("img");
      img.className = "thumb";
      img.alt = "no preview";
      img.dataset.sessionId = s.session_id;
    }
    if (s.preview_frame !== null && img.dataset.frame !== String(s.preview_frame)) {
      img.dataset.frame = String(s.preview_frame);
      img.src = `/api/sessions/${s.session_id}/preview?frame=${s.preview_frame}`;
    }
    const link = document.createElement("a");
    link.href = `/sessions/${s.session_id}`;
    link.appendChild(img);
    row.insertCell().appendChild(link);
    const name = document.createElement("a");
    name.href = link.href;
    name.className = "microscope";
    name.textContent = s.microscope_id || s.session_id;
    row.insertCell().appendChild(name);
    cell(row, s.sample);
    const shadow = s.shadow_model_version ? `, shadow ${s.shadow_model_version}` : "";
    cell(row, `${s.model_name} (${s.model_version}${shadow})`);
    cell(row, String(s.frames_stored), true);
    cell(row, fixed(s.frames_per_s, 1), true);
    cell(row, fixed(s.seconds_since_frame, 1), true);
    cell(row, fixed(s.loops_per_frame, 1), true);
    cell(row, String(s.rejected), true);
  }
}

const events = new EventSource("/api/events");
events.onopen = () => { status.textContent = "live"; };
events.onerror = () => { status.textContent = "reconnecting"; };
events.onmessage = (message) => {
  render(JSON.parse(message.data).sessions);
  status.textContent = `live, ${new Date().toLocaleTimeString()}`;
};
