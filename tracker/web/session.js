// One session, live: the shown frame with its ellipses and track tails, and the statistics plots.
// The tracker sends new per-frame statistics and, when it changes, the frame to show (SSE).
"use strict";

const sessionId = decodeURIComponent(location.pathname.split("/").pop());
const MAX_POINTS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const columns = {};
const series = { frame_index: [], timestamp_s: [], fluence_ions_cm2: [], loop_count: [],
  density_per_um2: [], mean_major_nm: [], mean_minor_nm: [], drift_x_nm: [], drift_y_nm: [] };

function plot(id, title, xLabel, names, yLabel) {
  const colours = ["#c0392b", "#2471a3", "#229954"];
  return new uPlot({
    title, width: 400, height: 210,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, { label: yLabel }],
    series: [{ label: xLabel }, ...names.map((n, i) => ({ label: n, stroke: colours[i], width: 1.5 }))],
  }, [[], ...names.map(() => [])], document.getElementById(id));
}

const plots = {
  density: plot("plot-density", "areal density", "time (s)", ["density /µm²"], "loops / µm²"),
  size: plot("plot-size", "mean size", "time (s)", ["D (nm)", "Dm (nm)"], "nm"),
  count: plot("plot-count", "loops per frame", "time (s)", ["loops"], "loops"),
  fluence: plot("plot-fluence", "areal density vs fluence", "fluence (ions/cm²)", ["density /µm²"], "loops / µm²"),
  drift: plot("plot-drift", "stage drift", "time (s)", ["x (nm)", "y (nm)"], "nm"),
  histogram: new uPlot({
    title: "size histogram, shown frame", width: 400, height: 210,
    scales: { x: { time: false } },
    axes: [{ label: "D (nm)" }, { label: "loops" }],
    series: [{ label: "D (nm)" }, { label: "loops", fill: "#2471a388", stroke: "#2471a3",
      paths: uPlot.paths.bars({ size: [0.9] }), points: { show: false } }],
  }, [[], []], document.getElementById("plot-histogram")),
};
window.loopstreamView = { plots };

function append(update) {
  update.columns.forEach((c, i) => { columns[c] = i; });
  const last = series.frame_index.length ? series.frame_index[series.frame_index.length - 1] : -1;
  for (const row of update.frames) {
    if (row[columns.frame_index] <= last) continue; // resent after a reconnect
    for (const c of Object.keys(series)) series[c].push(row[columns[c]]);
  }
  for (const c of Object.keys(series)) {
    if (series[c].length > MAX_POINTS) series[c].splice(0, series[c].length - MAX_POINTS);
  }
  const t = series.timestamp_s;
  plots.density.setData([t, series.density_per_um2]);
  plots.size.setData([t, series.mean_major_nm, series.mean_minor_nm]);
  plots.count.setData([t, series.loop_count]);
  plots.drift.setData([t, series.drift_x_nm, series.drift_y_nm]);
  plots.fluence.setData([series.fluence_ions_cm2, series.density_per_um2]);
}

function histogram(sizes) {
  if (!sizes.length) return [[], []];
  const top = Math.max(...sizes), bins = 12, width = Math.max(top / bins, 1e-9);
  const counts = new Array(bins).fill(0);
  for (const s of sizes) counts[Math.min(Math.floor(s / width), bins - 1)] += 1;
  return [counts.map((_, i) => (i + 0.5) * width), counts];
}

function show(frame) {
  const svg = document.getElementById("overlay");
  svg.setAttribute("viewBox", `0 0 ${frame.width_px} ${frame.height_px}`);
  svg.dataset.frameIndex = String(frame.frame_index);
  const img = document.getElementById("preview");
  if (frame.preview) img.src = `/api/sessions/${sessionId}/preview?frame=${frame.frame_index}`;
  img.hidden = !frame.preview;
  const ellipses = document.getElementById("ellipses");
  ellipses.replaceChildren(...frame.ellipses.map(([x, y, major, minor, angle]) => {
    const e = document.createElementNS(SVG, "ellipse");
    e.setAttribute("cx", x); e.setAttribute("cy", y);
    e.setAttribute("rx", major / 2); e.setAttribute("ry", minor / 2);
    // angle_deg is counter-clockwise from the x axis; SVG rotates clockwise (y points down).
    e.setAttribute("transform", `rotate(${-angle} ${x} ${y})`);
    return e;
  }));
  document.getElementById("tails").replaceChildren(...frame.tails.map((points) => {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map((p) => p.join(",")).join(" "));
    return line;
  }));
  document.getElementById("frame-caption").textContent =
    `frame ${frame.frame_index}: ${frame.ellipses.length} loops` +
    (frame.preview ? "" : " (no preview from this client: ellipses only)");
  plots.histogram.setData(histogram(frame.major_nm));
}

function facts(update) {
  const s = update.session;
  document.getElementById("title").textContent = `${s.microscope_id}: ${s.sample}`;
  document.title = `loopstream: ${s.microscope_id}`;
  const shown = {
    "model (arm)": `${s.model_name} ${s.model_version || "latest"}` +
      (s.shadow_model_version ? `, shadow ${s.shadow_model_version}` : ""),
    "frames stored": s.frames_stored,
    "frames/s": update.frames_per_s.toFixed(1),
    "lag (s since last frame)": update.seconds_since_frame === null ? "-" : update.seconds_since_frame,
    "failures": update.rejected,
    "pixel size": `${s.pixel_size_nm} nm`,
    "dose rate": s.dose_rate_ions_cm2_s > 0 ? `${s.dose_rate_ions_cm2_s} ions/cm²/s` : "not given (no fluence)",
    "dpa": "not reported by the tracker",
    "state": s.closed ? "closed" : "open",
  };
  document.getElementById("facts").replaceChildren(...Object.entries(shown).flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = String(v);
    return [dt, dd];
  }));
}

document.getElementById("export").href = `/api/sessions/${sessionId}/export.zip`;
document.getElementById("export-joined").href = `/api/sessions/${sessionId}/export.zip?join_fragments=1`;
const status = document.getElementById("status");
const events = new EventSource(`/api/sessions/${sessionId}/events`);
events.onopen = () => { status.textContent = "live"; };
events.onerror = () => { status.textContent = events.readyState === 2 ? "ended" : "reconnecting"; };
events.onmessage = (message) => {
  const update = JSON.parse(message.data);
  append(update);
  if (update.shown) show(update.shown);
  facts(update);
  if (update.session.closed) events.close();
  status.textContent = update.session.closed ? "session closed" : `live, ${new Date().toLocaleTimeString()}`;
};
