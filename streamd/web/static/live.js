// Keeps the live pictures and figures of the page current, without reloading it.
// Pictures: a long-poll per camera (latest.jpg?after=SEQ answers when a newer picture
// exists, at most web.fps a second), so a hidden or slow page simply asks less often.
// Figures: /api/stats every two seconds, the payloads exactly as published on MQTT.
"use strict";

const toggles = [...document.querySelectorAll("input[data-overlay]")];

function overlaysOf(tile) {
  if (!toggles.length) return tile.dataset.overlays;
  return toggles.filter((t) => t.checked).map((t) => t.dataset.overlay).join(",");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function follow(tile) {
  const img = tile.querySelector("img.live");
  const base = `/cameras/${encodeURIComponent(tile.dataset.camera)}/latest.jpg`;
  let seq = 0;
  let shown = null;
  let key = null;
  for (;;) {
    const overlays = overlaysOf(tile);
    if (overlays !== key) { key = overlays; seq = 0; }
    try {
      const q = new URLSearchParams({ overlays, after: String(seq) });
      const r = await fetch(`${base}?${q}`, { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      seq = Number(r.headers.get("X-Streamd-Seq")) || seq;
      const url = URL.createObjectURL(await r.blob());
      img.src = url;
      if (shown) URL.revokeObjectURL(shown);
      shown = url;
    } catch (e) {
      await sleep(1000);
    }
  }
}

const fmt = (v, digits = 1) => (typeof v === "number" ? v.toFixed(digits) : "–");

function show(tile, cam) {
  const set = (field, text) => {
    const el = tile.querySelector(`[data-field="${field}"]`);
    if (el) el.textContent = text;
  };
  const state = (cam.status && cam.status.state) || (cam.stats && cam.stats.state) || "unknown";
  const el = tile.querySelector('[data-field="state"]');
  el.textContent = state;
  el.className = `state state-${state}`;
  const s = cam.stats;
  if (!s) return;
  set("fps", `${fmt(s.fps_in)} / ${fmt(s.fps_analysed)}`);
  const shed = Object.values(s.shed || {}).reduce((a, b) => a + b, 0);
  set("dropped", `${s.dropped ?? "–"} / ${shed}`);
  set("p99", s.latency_ms ? `${fmt(s.latency_ms.p99, 0)} ms` : "–");
  const d = s.detector;
  set("detector", d ? `${fmt(s.fps_detected)} frames/s, ${fmt(d.infer_ms)} ms a call` : "off");
  set("stages", Object.entries(s.stage_ms || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(", "));
}

async function stats() {
  for (;;) {
    try {
      const r = await fetch("/api/stats", { cache: "no-store" });
      if (r.ok) {
        const data = await r.json();
        document.getElementById("broker").textContent =
          data.broker_connected ? "broker connected" : "broker DISCONNECTED";
        for (const tile of document.querySelectorAll(".tile")) {
          const cam = data.cameras[tile.dataset.camera];
          if (cam) show(tile, cam);
        }
      }
    } catch (e) {
      // the daemon restarts or the network blinks: try again at the next tick
    }
    await sleep(2000);
  }
}

document.querySelectorAll(".tile").forEach(follow);
stats();
