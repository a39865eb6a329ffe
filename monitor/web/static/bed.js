// vitalmon web station: a bed's page: trend plots from the store (limit bands, alert
// markers, NEWS2), its open alarms, alert history and admission.
"use strict";

(() => {
  const body = document.body;
  const ward = body.dataset.ward, bed = body.dataset.bed;
  const me = `${ward}/${bed}`;
  const hoursEl = document.getElementById("hours");
  const plotsEl = document.getElementById("plots");
  const PRI = { high: "#d0021b", medium: "#f5a623", low: "#00a0c6" };
  const LINES = ["#1f4e9c", "#7b3fa0", "#2e7d32", "#6d4c41"];
  let data = null;

  if ([...hoursEl.options].every((o) => o.value !== body.dataset.hours)) {
    hoursEl.add(new Option(body.dataset.hours, body.dataset.hours));
  }
  hoursEl.value = body.dataset.hours;

  async function load() {
    const r = await fetch(`/api/bed/${encodeURIComponent(ward)}/${encodeURIComponent(bed)}?hours=${hoursEl.value}`,
      { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/login"; return; }
    const doc = await r.json();
    if (!r.ok) { plotsEl.innerHTML = `<p class="bad">${VM.esc(doc.error || r.status)}</p>`; return; }
    data = doc;
    draw();
    history();
    admission();
  }

  function panel(title) {
    const wrap = document.createElement("figure");
    wrap.className = "plot";
    const cap = document.createElement("figcaption");
    cap.textContent = title;
    const canvas = document.createElement("canvas");
    wrap.append(cap, canvas);
    plotsEl.appendChild(wrap);
    return canvas;
  }

  function axes(canvas, t0, t1, lo, hi) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 700, h = canvas.clientHeight || 130;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    const L = 44, R = 8, T = 6, B = 18;
    const x = (t) => L + ((t - t0) / (t1 - t0 || 1)) * (w - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (h - T - B);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#667"; g.strokeStyle = "#dde";
    for (let k = 0; k <= 4; k++) {
      const v = lo + (k * (hi - lo)) / 4;
      g.beginPath(); g.moveTo(L, y(v)); g.lineTo(w - R, y(v)); g.stroke();
      g.fillText(v.toFixed(hi - lo < 10 ? 1 : 0), 2, y(v) + 4);
    }
    for (let k = 0; k <= 6; k++) {
      const t = t0 + (k * (t1 - t0)) / 6;
      g.textAlign = k === 0 ? "left" : k === 6 ? "right" : "center";
      g.fillText(new Date(t * 1000).toISOString().slice(11, 16), x(t), h - 4);
    }
    g.textAlign = "left";
    return { g, x, y, w, h, L, R, T, B };
  }

  function band(p, from, to, colour) {
    const { g, y, L, R, w } = p;
    const a = Math.min(y(from), y(to)), b = Math.max(y(from), y(to));
    g.fillStyle = colour;
    g.fillRect(L, a, w - L - R, b - a);
  }

  function draw() {
    plotsEl.innerHTML = "";
    // from the first reading shown (at least 10 minutes back) to now
    // (event time: a replay or a sped-up simulation may run ahead of the clock)
    let first = Infinity, last = -Infinity;
    for (const v of data.vitals) {
      for (const pts of Object.values(v.lines)) {
        if (pts.length) { first = Math.min(first, pts[0][0]); last = Math.max(last, pts[pts.length - 1][0]); }
      }
    }
    const t1 = isFinite(last) ? Math.max(last, Math.min(data.until - 60, last + 600)) : data.until - 60;
    const t0 = Math.max(data.since + 60, Math.min(isFinite(first) ? first : t1, t1 - 600));
    if (!data.vitals.length) {
      plotsEl.innerHTML = `<p class="quiet">No readings of ${VM.esc(me)} in the last ${hoursEl.value} h.</p>`;
    }
    for (const v of data.vitals) {
      const canvas = panel(`${v.label}${v.unit ? " (" + v.unit + ")" : ""}`);
      canvas.dataset.vital = v.vital;
      let lo = Infinity, hi = -Infinity;
      for (const pts of Object.values(v.lines)) for (const [, y] of pts) { lo = Math.min(lo, y); hi = Math.max(hi, y); }
      const lim = v.limits || {};
      for (const side of ["low", "high"]) for (const k of ["warn", "crit"]) {
        const val = lim[side] && lim[side][k];
        if (typeof val === "number" && Math.abs(val - (lo + hi) / 2) < (hi - lo) * 2 + 20) { lo = Math.min(lo, val); hi = Math.max(hi, val); }
      }
      const pad = Math.max(1, (hi - lo) * 0.1);
      lo -= pad; hi += pad;
      const p = axes(canvas, t0, t1, lo, hi);
      // limit bands: warn pale amber, crit pale red, on the side they apply
      if (lim.low) {
        if (typeof lim.low.warn === "number") band(p, lim.low.crit ?? lo, lim.low.warn, "rgba(255,176,0,0.15)");
        if (typeof lim.low.crit === "number") band(p, lo, lim.low.crit, "rgba(214,39,40,0.15)");
      }
      if (lim.high) {
        if (typeof lim.high.warn === "number") band(p, lim.high.warn, lim.high.crit ?? hi, "rgba(255,176,0,0.15)");
        if (typeof lim.high.crit === "number") band(p, lim.high.crit, hi, "rgba(214,39,40,0.15)");
      }
      let i = 0;
      for (const pts of Object.values(v.lines)) {
        const { g, x, y } = p;
        g.strokeStyle = LINES[i++ % LINES.length]; g.lineWidth = 1.3;
        g.beginPath();
        pts.forEach(([t, val], k) => (k ? g.lineTo(x(t), y(val)) : g.moveTo(x(t), y(val))));
        g.stroke();
        if (pts.length < 60) {
          g.fillStyle = g.strokeStyle;
          for (const [t, val] of pts) { g.beginPath(); g.arc(x(t), y(val), 2.5, 0, 7); g.fill(); }
        }
      }
      markers(p, data.markers.filter((m) => m.vital === v.vital), lo, hi);
      canvas.dataset.points = String(Object.values(v.lines).reduce((n, l) => n + l.length, 0));
    }
    const n2 = panel("NEWS2");
    n2.dataset.vital = "news2";
    const top = Math.max(10, ...data.news2.map(([, s]) => s + 1));
    const p = axes(n2, t0, t1, -0.5, top);
    band(p, 4.5, 6.5, "rgba(245,166,35,0.15)");
    band(p, 6.5, top, "rgba(208,2,27,0.12)");
    const { g, x, y } = p;
    g.strokeStyle = "#222"; g.lineWidth = 1.3; g.beginPath();
    data.news2.forEach(([t, s], k) => {
      if (k) g.lineTo(x(t), y(data.news2[k - 1][1]));
      k ? g.lineTo(x(t), y(s)) : g.moveTo(x(t), y(s));
    });
    g.stroke();
    markers(p, data.markers.filter((m) => m.vital === "news2" || m.kind === "score"), -0.5, top);
    plotsEl.dataset.loaded = String(Date.now());
  }

  function markers(p, list, lo, hi) {
    const { g, x, y } = p;
    for (const m of list) {
      const v = typeof m.value === "number" && m.value >= lo && m.value <= hi ? m.value : hi - (hi - lo) * 0.05;
      const cx = x(m.at), cy = y(v);
      g.fillStyle = m.state === "resolved" ? "#2e7d32" : PRI[m.priority] || "#555";
      g.beginPath();
      if (m.state === "resolved") { g.arc(cx, cy, 4, 0, 7); }
      else { g.moveTo(cx, cy - 6); g.lineTo(cx - 5, cy + 4); g.lineTo(cx + 5, cy + 4); g.closePath(); }
      g.fill();
    }
  }

  function history() {
    const tbody = document.querySelector("#history tbody");
    tbody.innerHTML = data.history.map((h) =>
      `<tr class="pri-${VM.esc(h.priority)}"><td>${VM.esc(h.at.slice(5, 19).replace("T", " "))}</td>` +
      `<td>${VM.esc(h.message || h.rule)}</td><td>${VM.esc(h.state)}</td><td>${VM.esc(h.ack_by || "")}</td></tr>`).join("");
  }

  function admission() {
    const a = data.admission;
    document.getElementById("admission").textContent = a
      ? `${a.patient} · profile ${a.profile || data.profile} · admitted ${a.at.slice(0, 16).replace("T", " ")} by ${a.by}`
      : `not admitted (profile ${data.profile})`;
    document.getElementById("patient").textContent = a ? a.patient : "";
    const sel = document.getElementById("admit-profile");
    if (!sel.options.length) for (const p of data.profiles) sel.add(new Option(p, p));
    sel.value = (a && a.profile) || data.profile;
  }

  document.getElementById("admit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const patient = document.getElementById("admit-patient").value.trim();
    const profile = document.getElementById("admit-profile").value;
    if (await VM.act("admit", { ward, bed, patient, profile })) load();
  });
  document.getElementById("discharge").addEventListener("click", async () => {
    if (!confirm(`Discharge the patient of ${me}?`)) return;
    if (await VM.act("discharge", { ward, bed })) load();
  });
  document.getElementById("pause").addEventListener("click", () =>
    VM.act("pause", { ward, bed, seconds: 120 }));
  hoursEl.addEventListener("change", load);

  function nowLine() {
    const b = VM.beds.get(me);
    const el = document.getElementById("now");
    if (!b) { el.textContent = ""; return; }
    el.innerHTML = Object.entries(b.vitals).map(([v, [val, arrow]]) =>
      `<span class="vital"><span class="vl">${VM.LABEL[v] || VM.esc(v)}</span><span class="vv">${VM.num(val, v)}</span><span class="va">${VM.esc(arrow)}</span></span>`).join("") +
      (b.news2 && typeof b.news2.news2 === "number" ? `<span class="vital"><span class="vl">NEWS2</span><span class="vv">${b.news2.news2}</span></span>` : "") +
      (VM.paused(b) ? `<span class="flag paused">⏸ paused</span>` : "") +
      (VM.isStale(b) ? `<span class="flag stale">no data</span>` : "");
  }
  VM.onMessage(() => {
    VM.renderAlarms((b) => VM.key(b) === me);
    nowLine();
  });
  load();
  setInterval(load, 30000);
  window.addEventListener("resize", () => data && draw());
})();
