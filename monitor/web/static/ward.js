// vitalmon web station: the ward page: a tile per bed, most severe first.
"use strict";

(() => {
  const tilesEl = document.getElementById("tiles");
  const tiles = new Map(); // key -> element
  const SHOWN = ["hr", "spo2", "rr", "sbp", "dbp", "temp", "etco2"];
  const ARROW = { "↑": "↑", "↓": "↓", "→": "→" };
  let scheduled = false;
  let dirty = new Set();
  let order = "";
  const shownAlarms = new Set();

  function riskClass(n2) {
    if (!n2 || typeof n2.news2 !== "number") return "n2-none";
    const risk = n2.risk || (n2.news2 >= 7 ? "high" : n2.news2 >= 5 ? "medium" : n2.news2 > 0 ? "low" : "zero");
    return `n2-${String(risk).replace(/[^a-z-]/g, "")}`;
  }

  function tileHTML(b) {
    const E = VM.esc;
    const vit = SHOWN.filter((v) => b.vitals[v]).map((v) => {
      const [value, arrow] = b.vitals[v];
      return `<span class="vital v-${v}"><span class="vl">${VM.LABEL[v] || E(v)}</span>` +
        `<span class="vv">${VM.num(value, v)}</span><span class="va">${ARROW[arrow] || ""}</span></span>`;
    }).join("");
    const c = VM.clinical(b);
    const top = c[0];
    const more = c.length > 1 ? ` <span class="more">+${c.length - 1}</span>` : "";
    const alarm = top
      ? `<div class="alarm pri-${E(top.priority)}${top.state === "acknowledged" ? " acked" : ""}">` +
        `${top.state === "acknowledged" ? "✓ " : ""}${E(VM.alertText(top))}${more}</div>`
      : "";
    const tech = VM.technical(b).map((a) =>
      `<div class="inop${a.state === "acknowledged" ? " acked" : ""}">INOP ${E(VM.alertText(a))}</div>`).join("");
    const n2 = b.news2 && typeof b.news2.news2 === "number"
      ? `<span class="news2 ${riskClass(b.news2)}" title="NEWS2${b.news2.partial ? " (partial)" : ""}">` +
        `NEWS2 ${b.news2.news2}${b.news2.partial ? "*" : ""}</span>` : "";
    const flags = [];
    if (VM.paused(b)) flags.push(`<span class="flag paused">⏸ paused ${Math.ceil(b.paused_until - VM.now())} s</span>`);
    if (VM.isStale(b)) flags.push(`<span class="flag stale">no data${b.seen ? " " + Math.floor(VM.now() - b.seen) + " s" : ""}</span>`);
    return `<a class="tile-link" href="/bed/${encodeURIComponent(b.ward)}/${encodeURIComponent(b.bed)}">` +
      `<div class="head"><span class="name">${E(b.ward)}/${E(b.bed)}</span>` +
      `<span class="patient">${E(b.patient || "")}</span>${n2}</div>` +
      `<div class="vitals">${vit}</div>${alarm}${tech}<div class="flags">${flags.join("")}</div></a>`;
  }

  function tileClass(b) {
    const sev = VM.severity(b);
    const c = VM.clinical(b);
    const names = ["tile", ["sev-high", "sev-medium", "sev-low", "sev-tech", "sev-none"][sev]];
    if (c.length && c[0].state === "acknowledged") names.push("acked");
    if (VM.paused(b)) names.push("paused");
    if (VM.isStale(b)) names.push("stale");
    return names.join(" ");
  }

  function render() {
    scheduled = false;
    const started = performance.now();
    const beds = VM.sorted();
    for (const b of beds) {
      const k = VM.key(b);
      let el = tiles.get(k);
      if (!el) {
        el = document.createElement("article");
        el.dataset.bed = k;
        tiles.set(k, el);
        dirty.add(k);
      }
      if (dirty.has(k)) {
        el.className = tileClass(b);
        el.innerHTML = tileHTML(b);
        // an alarm event's age as its tile is drawn (benchmarks/web.py)
        for (const a of b.alerts) {
          const mark = `${a.id}:${a.seq}`;
          if (!shownAlarms.has(mark)) {
            shownAlarms.add(mark);
            VM.stats.alarms.push(Date.now() / 1000 - Date.parse(a.at) / 1000);
          }
        }
      }
    }
    const now = beds.map(VM.key).join("|");
    if (now !== order) {
      order = now;
      const frag = document.createDocumentFragment();
      for (const b of beds) frag.appendChild(tiles.get(VM.key(b)));
      tilesEl.appendChild(frag);
      const keep = new Set(beds.map(VM.key));
      for (const [k, el] of tiles) if (!keep.has(k)) { el.remove(); tiles.delete(k); }
    }
    // how old each redrawn bed's newest reading is as it is drawn (event time to screen;
    // benchmarks/web.py sets the readings' ts to their publication)
    const drawnAt = Date.now() / 1000;
    for (const k of dirty) {
      const b = VM.beds.get(k);
      if (b && b.last_ts) VM.stats.drawn.push(drawnAt - b.last_ts);
    }
    if (VM.stats.drawn.length > 20000) VM.stats.drawn.splice(0, VM.stats.drawn.length - 20000);
    dirty = new Set();
    VM.renderAlarms();
    VM.renderAudit();
    const n = beds.length;
    const alarmed = beds.filter((b) => VM.severity(b) < 3).length;
    document.getElementById("summary").textContent = `${n} beds · ${alarmed} alarming`;
    VM.stats.draws.push(performance.now() - started);
    if (VM.stats.draws.length > 2000) VM.stats.draws.shift();
  }

  function schedule() {
    if (!scheduled) { scheduled = true; requestAnimationFrame(render); }
  }

  VM.onMessage((msg) => {
    for (const b of msg.beds) dirty.add(VM.key(b));
    schedule();
  });
  // stale and paused marks, and "since" times, change with the clock alone
  setInterval(() => {
    for (const b of VM.beds.values()) {
      const k = VM.key(b);
      const el = tiles.get(k);
      if (el && el.className !== tileClass(b)) dirty.add(k);
      if (VM.paused(b) || VM.isStale(b)) dirty.add(k);
    }
    schedule();
  }, 1000);
})();
