// The live page: draws window.FJ_STATE at once (the server inlines it), then polls
// /api/state every second. Read-only: it only ever GETs.
"use strict";
(function () {
  const POLL_MS = 1000;
  const COLOURS = { done: "#3fa45b", crashed: "#c0392b", timed_out: "#e67e22",
                    unreadable: "#8e44ad", cancelled: "#95a5a6", failed: "#c0392b",
                    over_memory: "#d35400", running: "#9ad0a8" };
  const charts = {};

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return (s / 3600).toFixed(1) + " h";
  }
  function card(key, label, value, bad) {
    const box = el("div", { class: "card" + (bad ? " bad" : ""), "data-key": key });
    box.appendChild(el("div", { class: "label" }, label));
    box.appendChild(el("div", { class: "value", "data-key": key }, String(value)));
    return box;
  }

  function drawPool(pool, index) {
    const s = pool.stats;
    const section = el("section", { class: "pool", "data-pool": String(index) });
    section.appendChild(el("h2", {}, pool.label));
    const alive = pool.workers.filter((w) => w.alive).length;
    const cards = el("div", { class: "cards" });
    const job = pool.job || {};
    const eta = job.eta === undefined ? "–" : fmtSeconds(job.eta);
    cards.append(
      card("workers", "workers", alive),
      card("tasks_done", "tasks done", s.tasks_done),
      card("items_done", "items done", s.items_done),
      card("in_flight", "in flight", s.in_flight),
      card("throughput", "items/s", s.throughput.toFixed(1)),
      card("eta", "ETA", job.items ? eta + " (" + job.done + "/" + job.items + ")" : eta),
      card("tasks_failed", "failed", s.tasks_failed, s.tasks_failed > 0),
      card("tasks_retried", "retried", s.tasks_retried, s.tasks_retried > 0),
      card("timeouts", "timeouts", s.timeouts, s.timeouts > 0),
      card("worker_crashes", "crashes", s.worker_crashes, s.worker_crashes > 0),
    );
    section.appendChild(cards);

    const row = el("div", { class: "row" });
    const chartBox = el("div", { class: "chart" });
    chartBox.appendChild(el("h3", {}, "Throughput (items/s)"));
    row.appendChild(chartBox);
    row.appendChild(workerTable(pool.workers, pool.current_known));
    section.appendChild(row);

    section.appendChild(el("h3", {}, "Tasks, last 30 s (one lane per worker)"));
    section.appendChild(timeline(pool));
    section.appendChild(failures(pool.failures));
    return [section, chartBox];
  }

  function workerTable(workers, currentKnown) {
    const box = el("div", {});
    box.appendChild(el("h3", {}, "Workers"));
    const table = el("table", { class: "workers" });
    const head = el("tr", {});
    for (const h of ["worker", "pid", "state", "current item", "tasks", "items", "busy", "RSS",
                     "peak RSS"]) {
      head.appendChild(el("th", {}, h));
    }
    table.appendChild(head);
    for (const w of workers) {
      const tr = el("tr", { "data-worker": String(w.worker) });
      const busy = w.busy === null || w.busy === undefined ? null : Math.round(100 * w.busy);
      const busyCell = el("td", {});
      if (busy !== null) {
        busyCell.appendChild(el("span", { class: "bar", style: "width:" + busy / 2 + "px" }));
        busyCell.appendChild(document.createTextNode(" " + busy + "%"));
      } else busyCell.textContent = "–";
      const current = w.current ? w.current + " · " + fmtSeconds(w.running_for) : "–";
      tr.append(el("td", {}, String(w.worker)), el("td", {}, String(w.pid || "–")),
                el("td", {}, !w.alive ? "exited" : w.current ? "running" :
                             currentKnown ? "idle" : "alive"),
                el("td", { class: "current", "data-key": "current" }, current),
                el("td", {}, String(w.tasks)),
                el("td", {}, String(w.items)), busyCell, el("td", {}, fmtBytes(w.rss)),
                el("td", {}, fmtBytes(w.peak_rss)));
      table.appendChild(tr);
    }
    box.appendChild(table);
    return box;
  }

  function timeline(pool) {
    const lanes = Math.max(1, pool.workers.length);
    const width = 900, lane = 16, height = lanes * lane + 18;
    const canvas = el("canvas", { class: "timeline", width: String(width), height: String(height) });
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
    const span = 30, x = (t) => width * (1 + t / span);
    ctx.fillStyle = "#5b6475"; ctx.font = "10px sans-serif";
    for (let s = 0; s <= span; s += 5) {
      ctx.fillRect(x(-s), height - 16, 1, 4);
      ctx.fillText(s ? "-" + s + " s" : "now", Math.min(x(-s) + 2, width - 24), height - 4);
    }
    const laneOf = {};
    pool.workers.forEach((w, i) => { laneOf[w.worker] = i; });
    for (const [worker, start, end, status] of pool.timeline) {
      const i = laneOf[worker] === undefined ? lanes - 1 : laneOf[worker];
      ctx.fillStyle = COLOURS[status] || "#3fa45b";
      const x0 = Math.max(0, x(start));
      ctx.fillRect(x0, i * lane + 2, Math.max(1.5, x(end) - x0), lane - 4);
    }
    return canvas;
  }

  function failures(list) {
    const box = el("div", { class: "failures" });
    box.appendChild(el("h3", {}, "Failures (" + list.length + ", newest first)"));
    for (const f of list.slice(0, 20)) {
      const details = el("details", { class: "failure" });
      const summary = el("summary", {});
      summary.appendChild(el("b", { class: "what" }, f.what));
      summary.appendChild(document.createTextNode(" — " + f.error + " (worker " + f.worker +
        ", attempt " + f.attempt + ", " + f.ago.toFixed(0) + " s ago)"));
      details.appendChild(summary);
      details.appendChild(el("pre", {}, f.traceback));
      box.appendChild(details);
    }
    return box;
  }

  function chart(box, pool, index) {
    const data = [pool.throughput.t, pool.throughput.items_per_s];
    let plot = charts[index];
    if (!plot) {
      plot = new uPlot({
        width: 420, height: 180,
        scales: { x: { time: false } },
        axes: [{ label: "seconds ago" }, {}],
        series: [{ label: "t" }, { label: "items/s", stroke: "#4c8bd6", width: 2,
                                   fill: "rgba(76,139,214,0.15)" }],
      }, data, box);
      charts[index] = plot;
    } else {
      box.appendChild(plot.root);
      plot.setData(data);
    }
  }

  const SPEEDS = ["tokens_per_s", "samples_per_s", "mfu", "model_tflops"];

  function fmtMetric(key, value) {
    if (typeof value !== "number") return String(value);
    if (key === "mfu") return (100 * value).toFixed(1) + "%";
    if (key.endsWith("_per_s")) return Math.round(value).toLocaleString("en");
    return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toPrecision(4);
  }

  function drawTraining(run, index) {
    const section = el("section", { class: "pool training", "data-training": String(index) });
    section.appendChild(el("h2", {}, run.label + (run.running ? "" : " (finished)")));
    const cards = el("div", { class: "cards" });
    const latest = run.latest || {};
    cards.appendChild(card("ranks", "ranks", run.ranks));
    cards.appendChild(card("elapsed", "elapsed", fmtSeconds(run.elapsed)));
    if (latest.step !== undefined) cards.appendChild(card("step", "step", latest.step));
    const metrics = Object.keys(latest).filter((k) => k !== "time" && k !== "step");
    metrics.sort((a, b) => SPEEDS.indexOf(a) - SPEEDS.indexOf(b));
    for (const key of metrics) {
      cards.appendChild(card("metric-" + key, key.replace(/_per_s$/, "/s"), fmtMetric(key, latest[key])));
    }
    section.appendChild(cards);
    const chartBox = el("div", { class: "chart" });
    const first = metrics.find((k) => !SPEEDS.includes(k));
    chartBox.appendChild(el("h3", {}, first ? first + " by step (averaged over ranks)" :
                                        "no metrics logged yet (fj.train.log)"));
    section.appendChild(chartBox);
    return [section, chartBox, first];
  }

  function trainingChart(box, run, index, key) {
    if (!key) return;
    const rows = run.records.filter((r) => typeof r[key] === "number");
    const xs = rows.map((r, i) => (r.step !== undefined ? r.step : i));
    const data = [xs, rows.map((r) => r[key])];
    const id = "training-" + index + "-" + key;
    let plot = charts[id];
    if (!plot) {
      plot = new uPlot({
        width: 420, height: 180, scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, { label: key, stroke: "#e8893a", width: 2 }],
      }, data, box);
      charts[id] = plot;
    } else {
      box.appendChild(plot.root);
      plot.setData(data);
    }
  }

  function drawData(stages) {
    const section = el("section", { class: "pool data" });
    section.appendChild(el("h2", {}, "forkjoin.data stages (most recent last)"));
    const table = el("table", { class: "stages" });
    const head = el("tr", {});
    for (const h of ["stage", "state", "partitions", "in flight", "rows in", "rows out",
                     "rows/s", "elapsed"]) head.appendChild(el("th", {}, h));
    table.appendChild(head);
    stages.forEach((s, i) => {
      const tr = el("tr", { "data-stage": String(i) });
      tr.append(el("td", { style: "text-align:left" }, s.label),
                el("td", {}, s.running ? "running" : "done"),
                el("td", { "data-key": "partitions" }, s.done + " / " + s.partitions),
                el("td", {}, String(s.in_flight)),
                el("td", { "data-key": "rows_in" }, s.rows_in.toLocaleString("en")),
                el("td", { "data-key": "rows_out" }, s.rows_out.toLocaleString("en")),
                el("td", {}, Math.round(s.rows_per_s).toLocaleString("en")),
                el("td", {}, fmtSeconds(s.elapsed)));
      table.appendChild(tr);
    });
    section.appendChild(table);
    return section;
  }

  function drawEnded(pools, count) {
    const section = el("section", { class: "pool ended" });
    section.appendChild(el("h2", {}, "Pools that have shut down (" + count + ", most recent first)"));
    const table = el("table", { class: "stages" });
    const head = el("tr", {});
    for (const h of ["pool", "tasks done", "items done", "failed", "last active"]) {
      head.appendChild(el("th", {}, h));
    }
    table.appendChild(head);
    for (const p of pools) {
      const tr = el("tr", {});
      tr.append(el("td", { style: "text-align:left" }, p.label), el("td", {}, String(p.tasks_done)),
                el("td", {}, String(p.items_done)),
                el("td", { class: p.tasks_failed ? "bad" : "" }, String(p.tasks_failed)),
                el("td", {}, fmtSeconds(p.ago) + " ago"));
      table.appendChild(tr);
    }
    section.appendChild(table);
    return section;
  }
  function render(state) {
    document.getElementById("meta").textContent =
      state.title + " · pid " + state.pid + " · up " + fmtSeconds(state.uptime);
    const root = document.getElementById("pools");
    root.replaceChildren();
    if (!state.pools.length && !(state.training || []).length && !(state.data || []).length) {
      root.appendChild(el("p", { id: "empty" }, "No pool is running in this process yet."));
    }
    state.pools.forEach((pool, index) => {
      const [section, chartBox] = drawPool(pool, index);
      root.appendChild(section);
      chart(chartBox, pool, index);
    });
    if ((state.ended || []).length) root.appendChild(drawEnded(state.ended, state.ended_count));
    if ((state.data || []).length) root.appendChild(drawData(state.data));
    (state.training || []).forEach((run, index) => {
      const [section, chartBox, key] = drawTraining(run, index);
      root.appendChild(section);
      trainingChart(chartBox, run, index, key);
    });
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const response = await fetch("/api/state?token=" + encodeURIComponent(window.FJ_TOKEN),
                                   { cache: "no-store" });
      if (!response.ok) throw new Error(response.status);
      render(await response.json());
      status.textContent = "live"; status.className = "";
    } catch (err) {
      status.textContent = "disconnected (the program may have ended)"; status.className = "stale";
    }
    setTimeout(poll, POLL_MS);
  }

  render(window.FJ_STATE);
  setTimeout(poll, POLL_MS);
})();
