// Runnel's dashboard: reads /ui/events (server-sent events, one snapshot a
// second) with fetch, so that a bearer token can go along, and draws it.
"use strict";

const history = []; // [{at: ms, rate: records/s}], the last two minutes
let previous = null; // the last snapshot, for rates
const rates = new Map(); // function -> records/s

const token = () => sessionStorage.getItem("runnel-token") || "";
const headers = () => (token() ? { Authorization: "Bearer " + token() } : {});

function setConnection(text, kind) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.className = kind;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function drawFunctions(snapshot) {
  const body = document.querySelector("#functions tbody");
  body.replaceChildren();
  if (snapshot.functions.length === 0) {
    const row = body.insertRow();
    cell(row, "No function runs here yet.").colSpan = 9;
    return;
  }
  for (const f of snapshot.functions) {
    const row = body.insertRow();
    row.id = "function-" + f.name;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = f.name;
    row.appendChild(name);
    cell(row, f.version.slice(0, 12)).title = f.version;
    const state = cell(row, f.state + (f.reason ? ": " + f.reason : ""), "state-" + f.state);
    state.dataset.field = "state";
    cell(row, String(f.counters.handled), "number").dataset.field = "handled";
    cell(row, (rates.get(f.name) ?? 0).toFixed(1), "number").dataset.field = "rate";
    cell(row, String(f.lag), "number").dataset.field = "lag";
    cell(row, String(f.counters.deadLettered), "number").dataset.field = "dead-lettered";
    cell(row, String(f.counters.failed), "number").dataset.field = "failed";
    const actions = cell(row, "");
    const replay = document.createElement("button");
    replay.type = "button";
    replay.textContent = "Replay dead letters";
    replay.setAttribute("aria-label", "Replay the dead letters of " + f.name);
    replay.disabled = f.counters.deadLettered === 0 && !f.recent.some((i) => i.kind === "dead-letter");
    replay.addEventListener("click", () => replayDeadLetters(f.name));
    actions.appendChild(replay);
  }
}

function drawIncidents(snapshot) {
  const list = document.getElementById("incidents");
  const all = snapshot.functions
    .flatMap((f) => f.recent.map((i) => ({ ...i, function: f.name })))
    .sort((a, b) => (a.at < b.at ? 1 : -1))
    .slice(0, 20);
  list.replaceChildren();
  if (all.length === 0) {
    list.appendChild(Object.assign(document.createElement("li"), { textContent: "None." }));
    return;
  }
  for (const i of all) {
    const li = document.createElement("li");
    const time = Object.assign(document.createElement("time"), { dateTime: i.at, textContent: new Date(i.at).toLocaleTimeString() });
    const kind = Object.assign(document.createElement("span"), { className: "kind", textContent: " " + i.kind + " " });
    li.append(time, kind, `${i.function}, partition ${i.partition} offset ${i.offset}: ${i.detail}`);
    list.appendChild(li);
  }
}

function drawPanels(snapshot) {
  const box = document.getElementById("panels");
  box.replaceChildren();
  snapshot.panels.forEach((panel, n) => {
    const section = document.createElement("section");
    const title = Object.assign(document.createElement("h2"), { id: "panel-" + n, textContent: panel.title });
    section.setAttribute("aria-labelledby", title.id);
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const c of panel.columns) head.appendChild(Object.assign(document.createElement("th"), { scope: "col", textContent: c }));
    const body = table.createTBody();
    if (panel.rows.length === 0) cell(body.insertRow(), "None yet.").colSpan = panel.columns.length;
    for (const r of panel.rows) {
      const row = body.insertRow();
      for (const v of r) cell(row, v);
    }
    section.append(title, table);
    box.appendChild(section);
  });
}

function drawChart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.body);
  ctx.strokeStyle = style.color;
  ctx.fillStyle = style.color;
  ctx.font = "12px system-ui, sans-serif";
  const max = Math.max(1, ...history.map((h) => h.rate));
  ctx.fillText(max.toFixed(0) + "/s", 4, 14);
  ctx.beginPath();
  const span = 120000;
  const now = Date.now();
  history.forEach((h, i) => {
    const x = width - ((now - h.at) / span) * width;
    const y = height - 4 - (h.rate / max) * (height - 24);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  const last = history.length ? history[history.length - 1].rate : 0;
  canvas.setAttribute("aria-label", `records handled per second, last two minutes; now ${last.toFixed(1)}, peak ${max.toFixed(1)}`);
}

function show(snapshot) {
  const at = Date.parse(snapshot.at);
  let total = 0;
  for (const f of snapshot.functions) {
    const before = previous?.functions.find((p) => p.name === f.name);
    const seconds = previous ? (at - Date.parse(previous.at)) / 1000 : 0;
    const rate = before && seconds > 0 ? Math.max(0, f.counters.handled - before.counters.handled) / seconds : 0;
    rates.set(f.name, rate);
    total += rate;
  }
  if (previous) history.push({ at, rate: total });
  while (history.length && history[0].at < at - 120000) history.shift();
  previous = snapshot;
  drawFunctions(snapshot);
  drawIncidents(snapshot);
  drawPanels(snapshot);
  drawChart();
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

async function replayDeadLetters(name) {
  const result = document.getElementById("action-result");
  result.textContent = `Replaying the dead letters of ${name}…`;
  try {
    const response = await fetch(`/admin/functions/${encodeURIComponent(name)}/replay`, {
      method: "POST",
      headers: { ...headers(), "Content-Type": "application/json" },
      body: JSON.stringify({ from: "dead-letters" }),
    });
    const answer = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? `${name}: ${answer.replayed} dead letter(s) replayed.`
      : `${name}: replay refused (${response.status}): ${answer.detail || response.statusText}`;
  } catch (e) {
    result.textContent = `${name}: replay failed: ${e}`;
  }
}

// Reads the event stream; on any end, connects again after two seconds.
async function follow() {
  for (;;) {
    try {
      const response = await fetch("/ui/events", { headers: { ...headers(), Accept: "text/event-stream" } });
      if (response.status === 401 || response.status === 403) {
        setConnection(`not allowed (${response.status}): enter a token with the admin role`, "down");
        document.getElementById("access").open = true;
      } else if (!response.ok || !response.body) {
        setConnection(`the host answered ${response.status}`, "down");
      } else {
        setConnection("live", "live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
            if (data) show(JSON.parse(data));
          }
        }
        setConnection("disconnected; reconnecting…", "down");
      }
    } catch (e) {
      setConnection("disconnected; reconnecting…", "down");
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("runnel-token", document.getElementById("token").value.trim());
  location.reload();
});
follow();
