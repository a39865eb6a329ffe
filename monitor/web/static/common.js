// vitalmon web station: what the ward and bed pages share: the live stream, commands
// (with the session's CSRF token), the alarm list, and the alarm tones.
"use strict";

const VM = (() => {
  const body = document.body;
  const role = body.dataset.role;
  const ALLOWED = {
    ack: ["nurse", "charge"],
    pause: ["nurse", "charge"],
    admit: ["charge"],
    discharge: ["charge"],
  };
  const RANK = { high: 0, medium: 1, low: 2 };
  const LABEL = {
    hr: "HR", spo2: "SpO₂", rr: "RR", sbp: "SBP", dbp: "DBP", map: "MAP",
    temp: "Temp", etco2: "EtCO₂",
  };
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const beds = new Map(); // "ward/bed" -> bed
  let audit = [];
  let offset = 0; // server clock - browser clock (s)
  let staleAfter = 30;
  let listeners = [];
  const stats = { messages: 0, lags: [], renders: [], frames: [], drawn: [], draws: [], alarms: [], started: performance.now() };
  window.vitalmonStats = stats;

  function may(action) { return (ALLOWED[action] || []).includes(role); }
  function now() { return Date.now() / 1000 + offset; }
  function key(b) { return `${b.ward}/${b.bed}`; }
  function esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }
  function since(iso) {
    const t = Date.parse(iso) / 1000;
    if (!isFinite(t)) return "";
    const s = Math.max(0, now() - t);
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  function clock(t) {
    const d = new Date(t * 1000);
    return d.toISOString().slice(11, 19);
  }
  function num(v, vital) {
    if (v === null || v === undefined) return "–";
    return vital === "temp" ? Number(v).toFixed(1) : String(Math.round(v));
  }
  function status(text, bad) {
    const el = document.getElementById("action-status");
    if (el) { el.textContent = text; el.classList.toggle("bad", !!bad); }
  }

  async function act(action, payload) {
    if (!may(action)) { status(`a ${role} may not ${action}`, true); return null; }
    status(`${action}…`);
    try {
      const r = await fetch(`/api/${action}`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(payload),
      });
      const doc = await r.json().catch(() => ({}));
      if (r.status === 401) { location.href = "/login"; return null; }
      if (!r.ok) { status(`${action} refused: ${doc.error || r.status}`, true); return null; }
      status(`${action}: done`);
      return doc;
    } catch (e) {
      status(`${action} failed: ${e}`, true);
      return null;
    }
  }

  // ------------------------------------------------------------ the live stream
  function connect() {
    const link = document.getElementById("link");
    const es = new EventSource("/api/events");
    es.onopen = () => { link.textContent = "live"; link.className = "link up"; };
    es.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      const received = Date.now() / 1000;
      offset = msg.now - received;
      stats.messages += 1;
      if (msg.stale_after_s) staleAfter = msg.stale_after_s;
      if (!msg.connected) { link.textContent = "broker down"; link.className = "link down"; }
      else { link.textContent = "live"; link.className = "link up"; }
      for (const b of msg.beds) {
        b.received = received;
        // the newest reading's event time -> how late this update is in the browser
        beds.set(key(b), b);
      }
      if (msg.audit) audit = audit.concat(msg.audit).slice(-200);
      const t0 = performance.now();
      for (const fn of listeners) fn(msg);
      stats.renders.push(performance.now() - t0);
      if (stats.renders.length > 2000) stats.renders.shift();
      if (msg.beds.length && msg.beds[0].last_ts) {
        let lag = 0;
        for (const b of msg.beds) if (b.seen) lag = Math.max(lag, received + offset - b.seen);
        stats.lags.push(lag * 1000 + (performance.now() - t0));
        if (stats.lags.length > 2000) stats.lags.shift();
      }
      tones.update();
    };
    es.addEventListener("logout", () => { location.href = "/login"; });
    es.onerror = async () => {
      link.textContent = "reconnecting…"; link.className = "link down";
      if (es.readyState === EventSource.CLOSED) {
        const r = await fetch("/api/audit", { credentials: "same-origin" }).catch(() => null);
        if (r && r.status === 401) { location.href = "/login"; return; }
        setTimeout(connect, 2000);
      }
    };
  }
  (function frames() {
    let last = performance.now();
    function tick(t) {
      stats.frames.push(t - last);
      if (stats.frames.length > 2000) stats.frames.shift();
      last = t;
      requestAnimationFrame(tick);
    }
    requestAnimationFrame(tick);
  })();

  // ---------------------------------------------------------------- the beds
  function isStale(b) {
    return !b.seen || now() - b.seen > staleAfter;
  }
  function paused(b) { return b.paused_until && b.paused_until > now(); }
  function clinical(b) {
    return b.alerts.filter((a) => a.kind !== "technical")
      .sort((x, y) => (RANK[x.priority] ?? 9) - (RANK[y.priority] ?? 9));
  }
  function technical(b) { return b.alerts.filter((a) => a.kind === "technical"); }
  function severity(b) {
    const c = clinical(b);
    if (c.length) return RANK[c[0].priority] ?? 2;
    return b.alerts.length ? 3 : 4;
  }
  function news2(b) { return b.news2 && typeof b.news2.news2 === "number" ? b.news2.news2 : -1; }
  function natural(a, b) { return a.localeCompare(b, undefined, { numeric: true }); }
  // a bed known only from an empty retained state (no reading since the station
  // started, no alarm, no score, nobody admitted) is not shown
  function shown(b) { return b.alerts.length || b.seen || b.news2 || b.patient; }
  function sorted() {
    return [...beds.values()].filter(shown).sort((a, b) =>
      severity(a) - severity(b) || news2(b) - news2(a) ||
      natural(a.ward, b.ward) || natural(a.bed, b.bed));
  }
  function alertText(a) {
    return a.message || `${a.rule} ${a.vital}`;
  }

  // -------------------------------------------------------------- alarm list
  let lastAlarms = null;
  function renderAlarms(filter) {
    const tbody = document.querySelector("#alarms tbody");
    if (!tbody) return;
    const rows = [];
    for (const b of beds.values()) {
      if (filter && !filter(b)) continue;
      for (const a of b.alerts) rows.push([b, a]);
    }
    rows.sort(([, x], [, y]) =>
      (x.state === "acknowledged") - (y.state === "acknowledged") ||
      (RANK[x.priority] ?? 9) - (RANK[y.priority] ?? 9) ||
      String(x.started_at).localeCompare(String(y.started_at)));
    const ackOk = may("ack"), pauseOk = may("pause");
    const html = rows.map(([b, a]) => {
      const state = a.state === "acknowledged" ? `ack ${esc(a.ack_by || "")}`
        : a.escalated ? "escalated" : "active";
      const tech = a.kind === "technical" ? " tech" : "";
      const buttons = [
        ackOk && a.state !== "acknowledged"
          ? `<button class="ack" data-id="${esc(a.id)}" type="button">Ack</button>` : "",
        pauseOk && !paused(b)
          ? `<button class="pause" data-ward="${esc(b.ward)}" data-bed="${esc(b.bed)}" type="button">Pause</button>` : "",
      ].join("");
      return `<tr class="pri-${esc(a.priority)}${tech} st-${esc(a.state)}" data-alert="${esc(a.id)}">` +
        `<td><span class="chip pri-${esc(a.priority)}${tech}">${a.kind === "technical" ? "INOP" : esc(a.priority)}</span></td>` +
        `<td><a href="/bed/${encodeURIComponent(b.ward)}/${encodeURIComponent(b.bed)}">${esc(b.ward)}/${esc(b.bed)}</a></td>` +
        `<td>${esc(alertText(a))}</td><td>${esc(String(a.started_at).slice(11, 19))}</td>` +
        `<td class="state">${state}</td><td class="buttons">${buttons}</td></tr>`;
    }).join("");
    // redrawn only when it changed: a button being clicked is not replaced under the pointer
    if (html !== lastAlarms) { tbody.innerHTML = html; lastAlarms = html; }
    const none = document.getElementById("no-alarms");
    if (none) none.hidden = rows.length > 0;
    const count = document.getElementById("alarm-count");
    if (count) count.textContent = rows.length ? `(${rows.length})` : "";
  }
  document.addEventListener("click", (ev) => {
    const t = ev.target;
    if (!(t instanceof HTMLElement)) return;
    if (t.matches("button.ack")) { t.disabled = true; act("ack", { id: t.dataset.id }); }
    if (t.matches("button.pause")) {
      t.disabled = true;
      act("pause", { ward: t.dataset.ward, bed: t.dataset.bed, seconds: 120 });
    }
  });

  function renderAudit() {
    const tbody = document.querySelector("#audit tbody");
    if (!tbody) return;
    tbody.innerHTML = audit.slice(-30).reverse().map((r) =>
      `<tr><td>${clock(r.at)}</td><td class="by">${esc(r.by)}</td>` +
      `<td>${esc(r.action)}${r.detail ? " " + esc(r.detail) : ""}</td>` +
      `<td>${esc(r.ward)}/${esc(r.bed)}</td></tr>`).join("");
  }

  // ------------------------------------------------------------------- tones
  // IEC 60601-1-8 burst patterns (README, "Alarm tones"): high 10 pulses (3+2, 3+2),
  // medium 3 pulses, low 2 pulses; repeated while an alarm of that priority is active,
  // not acknowledged and its bed not paused. Muted until the user enables sound (browsers
  // start audio only after a gesture).
  const PATTERNS = {
    high: { hz: 660, pulse: 0.15, at: [0, 0.25, 0.5, 0.95, 1.2, 2.2, 2.45, 2.7, 3.15, 3.4], every: 7 },
    medium: { hz: 523, pulse: 0.2, at: [0, 0.35, 0.7], every: 8 },
    low: { hz: 440, pulse: 0.2, at: [0, 0.35], every: 20 },
  };
  const tones = {
    ctx: null, enabled: false, playing: null, next: 0, played: [],
    level() {
      let best = null;
      for (const b of beds.values()) {
        for (const a of b.alerts) {
          if (a.state === "acknowledged") continue;
          if (paused(b) && a.priority !== "high") continue;
          if (best === null || (RANK[a.priority] ?? 9) < (RANK[best] ?? 9)) best = a.priority;
        }
      }
      return best;
    },
    burst(priority) {
      const p = PATTERNS[priority];
      if (!p) return;
      this.played.push({ priority, at: Date.now() });
      if (this.played.length > 100) this.played.shift();
      if (!this.ctx) return;
      const t0 = this.ctx.currentTime + 0.05;
      for (const dt of p.at) {
        const osc = this.ctx.createOscillator();
        const gain = this.ctx.createGain();
        osc.type = "square"; // odd harmonics: IEC 60601-1-8 asks for at least four
        osc.frequency.value = p.hz;
        gain.gain.setValueAtTime(0, t0 + dt);
        gain.gain.linearRampToValueAtTime(0.12, t0 + dt + 0.02);
        gain.gain.setValueAtTime(0.12, t0 + dt + p.pulse - 0.02);
        gain.gain.linearRampToValueAtTime(0, t0 + dt + p.pulse);
        osc.connect(gain).connect(this.ctx.destination);
        osc.start(t0 + dt);
        osc.stop(t0 + dt + p.pulse + 0.01);
      }
    },
    update() {
      if (!this.enabled) return;
      const level = this.level();
      const t = Date.now() / 1000;
      if (level === null) { this.playing = null; return; }
      if (level !== this.playing || t >= this.next) {
        this.playing = level;
        this.next = t + PATTERNS[level].every;
        this.burst(level);
      }
    },
  };
  window.vitalmonTones = tones;
  function soundButton() {
    const btn = document.getElementById("sound");
    if (!btn) return;
    btn.addEventListener("click", async () => {
      tones.enabled = !tones.enabled;
      if (tones.enabled && !tones.ctx) {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        if (Ctx) tones.ctx = new Ctx();
      }
      if (tones.ctx && tones.enabled) await tones.ctx.resume().catch(() => {});
      btn.textContent = tones.enabled ? "Sound on" : "Sound off";
      btn.setAttribute("aria-pressed", String(tones.enabled));
      tones.playing = null;
      tones.update();
    });
    setInterval(() => tones.update(), 500);
  }

  function hideForbidden() {
    for (const el of document.querySelectorAll("[data-needs]")) {
      if (!may(el.dataset.needs)) el.hidden = true;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    hideForbidden();
    soundButton();
    connect();
  });

  return {
    beds, act, may, now, key, esc, since, clock, num, status, LABEL, RANK,
    isStale, paused, clinical, technical, severity, sorted, alertText, renderAlarms,
    renderAudit, stats, tones, csrf,
    get audit() { return audit; },
    onMessage(fn) { listeners.push(fn); },
  };
})();
